// Jalapeño core simulation harness: the Verilator model of the core, clocked in C++,
// with an external-memory model, driven by the host runtime over stdin/stdout.
//
// Verilator spells the double underscores of Amaranth's port names "___05F".
//
// The model's top is core_sim (sim/core_model.py: sim_wrapper), which registers the
// core's inputs (all but clk and reg_addr), so that Verilator evaluates the design once
// per clock edge instead of once per eval() call: the harness reads the core's outputs
// after an edge, and puts the next cycle's inputs in with the next edge (cycle()).
//
// Command line: Vcore --dram-words N --word-bytes B [--read-latency L] [--write-latency L]
//                     [--read-interval I] [--write-interval I]
// (an interval of I cycles between data beats = 1/I words per cycle per channel).
//
// Binary commands on stdin (little-endian), each answered on stdout:
//   'W' u32 addr u32 words  <words * B bytes>   write external memory      -> 'K'
//   'R' u32 addr u32 words                      read external memory       -> <bytes>
//   'I' u32 count <count * 32 bytes>            queue instructions         -> 'K'
//   'G' u32 register                            read a core register       -> u32
//   'S'                                         soft reset (one cycle)     -> 'K'
//   'P' u32 register u32 value                  write a core register      -> 'K'
//   'B' u32 count <count * 16 bytes>            queue scheduler requests   -> 'K'
//   'F' u32 count <count * u32>                 queue batch-done tags      -> 'K'
//   'E'                                         collected scheduler output -> u32 n, n * u32 responses,
//                                                                             u32 m, m * 32-byte batch words
//   'X' u64 max_cycles u64 stall_limit u8 mode  run: mode 0 until idle with nothing queued,
//                                               mode 1 until a batch word arrives
//        -> u8 reason (0 idle, 1 error, 2 blocked: no progress for stall_limit cycles, 3 max_cycles,
//                      4 a batch word arrived)
//           u64 cycles run
//   'Q'                                         quit                       -> 'K'
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "Vcore.h"
#include "verilated.h"

namespace {

// -- Wide-signal access (the signal's C++ type depends on its width) --------------------
void set_sig(CData &s, const uint32_t *w) { s = static_cast<CData>(w[0]); }
void set_sig(SData &s, const uint32_t *w) { s = static_cast<SData>(w[0]); }
void set_sig(IData &s, const uint32_t *w) { s = w[0]; }
void set_sig(QData &s, const uint32_t *w) { s = static_cast<QData>(w[0]) | (static_cast<QData>(w[1]) << 32); }
template <std::size_t N> void set_sig(VlWide<N> &s, const uint32_t *w) { for (std::size_t i = 0; i < N; ++i) s[i] = w[i]; }
void get_sig(const CData &s, uint32_t *w) { w[0] = s; }
void get_sig(const SData &s, uint32_t *w) { w[0] = s; }
void get_sig(const IData &s, uint32_t *w) { w[0] = s; }
void get_sig(const QData &s, uint32_t *w) { w[0] = static_cast<uint32_t>(s); w[1] = static_cast<uint32_t>(s >> 32); }
template <std::size_t N> void get_sig(const VlWide<N> &s, uint32_t *w) { for (std::size_t i = 0; i < N; ++i) w[i] = s[i]; }

[[noreturn]] void fail(const std::string &message) {
    std::fprintf(stderr, "core harness: %s\n", message.c_str());
    std::exit(2);
}

void read_exact(void *buffer, std::size_t size) {
    if (size && std::fread(buffer, 1, size, stdin) != size) fail("stdin closed mid-command");
}
template <typename T> T read_value() { T v; read_exact(&v, sizeof v); return v; }
void write_exact(const void *buffer, std::size_t size) {
    if (size && std::fwrite(buffer, 1, size, stdout) != size) fail("stdout closed");
}

struct Burst { uint64_t addr, len, done, ready_at; };

struct Harness {
    std::unique_ptr<VerilatedContext> context;
    std::unique_ptr<Vcore> top;
    unsigned word_bytes, word_u32;
    uint64_t dram_words;
    std::vector<uint32_t> dram;              // dram_words * word_u32
    uint64_t read_latency = 20, write_latency = 20, read_interval = 1, write_interval = 1;
    std::deque<Burst> reads, writes, acks;
    uint64_t next_read_beat = 0, next_write_beat = 0, now = 0;
    std::deque<std::vector<uint32_t>> instructions;   // 8 u32 each
    std::deque<std::vector<uint32_t>> requests;       // 4 u32 each
    std::deque<uint32_t> done_tags, responses;
    std::deque<std::vector<uint32_t>> batch_words;    // 8 u32 each
    // Inputs the harness drives from its own state (besides the queues above).
    bool in_rst = true, in_soft_reset = false, in_reg_we = false;
    uint32_t in_reg_wdata = 0;
    // The inputs the core sees this cycle (captured by the wrapper), as far as the
    // handshakes need them.
    bool cur_insn_valid = false, cur_rd_req_ready = false, cur_read_beat = false;
    bool cur_wr_req_ready = false, cur_wr_data_ready = false, cur_ack = false;
    bool cur_req_valid = false, cur_done_valid = false;
    // Harness state changed outside cycle(): the captured inputs are stale.
    bool dirty = true;

    Harness(int argc, char **argv) {
        context = std::make_unique<VerilatedContext>();
        top = std::make_unique<Vcore>(context.get());
        word_bytes = 0; dram_words = 0;
        for (int i = 1; i + 1 < argc; i += 2) {
            std::string key = argv[i];
            uint64_t value = std::strtoull(argv[i + 1], nullptr, 0);
            if (key == "--dram-words") dram_words = value;
            else if (key == "--word-bytes") word_bytes = static_cast<unsigned>(value);
            else if (key == "--read-latency") read_latency = value;
            else if (key == "--write-latency") write_latency = value;
            else if (key == "--read-interval") read_interval = value ? value : 1;
            else if (key == "--write-interval") write_interval = value ? value : 1;
            else fail("unknown option " + key);
        }
        if (!word_bytes || word_bytes % 4 || !dram_words) fail("need --word-bytes (multiple of 4) and --dram-words");
        word_u32 = word_bytes / 4;
        dram.assign(dram_words * word_u32, 0);
        top->clk = 0; top->capture = 0; top->reg_addr = 0;
        in_rst = true;
        for (int i = 0; i < 4; ++i) cycle();
        in_rst = false;
        dirty = true;
    }

    uint32_t *word(uint64_t addr) {
        if (addr >= dram_words) fail("memory access beyond --dram-words at word " + std::to_string(addr));
        return &dram[addr * word_u32];
    }

    // The inputs of the coming cycle, from the harness's state: onto the wrapper's
    // input ports (captured at the next clock edge, or by capture()).
    void drive() {
        top->rst = in_rst; top->soft_reset = in_soft_reset;
        top->reg_we = in_reg_we; top->reg_wdata = in_reg_wdata;
        // Instruction source.
        cur_insn_valid = !instructions.empty();
        top->insn___05Fvalid = cur_insn_valid;
        if (cur_insn_valid) set_sig(top->insn___05Fpayload, instructions.front().data());
        // Read channel: accept requests, return beats of the oldest burst once its latency passed.
        cur_rd_req_ready = reads.size() < 64;
        top->mem___05Frd_req___05Fready = cur_rd_req_ready;
        cur_read_beat = !reads.empty() && reads.front().ready_at <= now && next_read_beat <= now;
        top->mem___05Frd_data___05Fvalid = cur_read_beat;
        if (cur_read_beat) set_sig(top->mem___05Frd_data___05Fpayload, word(reads.front().addr + reads.front().done));
        // Write channel: accept requests, take beats for the oldest burst, acknowledge after latency.
        cur_wr_req_ready = writes.size() < 64;
        top->mem___05Fwr_req___05Fready = cur_wr_req_ready;
        cur_wr_data_ready = !writes.empty() && next_write_beat <= now;
        top->mem___05Fwr_data___05Fready = cur_wr_data_ready;
        cur_ack = !acks.empty() && acks.front().ready_at <= now;
        top->mem___05Fwr_ack___05Fvalid = cur_ack;
        top->mem___05Fwr_ack___05Fpayload = 0;
        // Scheduler: requests and done tags from the host; responses and batch words collected.
        cur_req_valid = !requests.empty();
        top->req___05Fvalid = cur_req_valid;
        if (cur_req_valid) set_sig(top->req___05Fpayload, requests.front().data());
        cur_done_valid = !done_tags.empty();
        top->done___05Fvalid = cur_done_valid;
        if (cur_done_valid) top->done___05Fpayload = done_tags.front();
        top->resp___05Fready = 1;
        top->batch___05Fready = 1;
    }

    // Load the inputs into the wrapper's registers without clocking the core, after
    // the harness's state changed outside cycle() (a command from the host).
    void capture() {
        drive();
        top->capture = 1; top->eval();
        top->capture = 0; top->eval();
        dirty = false;
    }

    // One clock cycle. The wrapper (core_model.py) registers every input but clk and
    // reg_addr, so the core's outputs depend only on its state: they are read straight
    // after the previous edge, and the next cycle's inputs go in with this edge. The
    // Verilated model thus evaluates the core's logic once per cycle.
    void cycle() {
        if (dirty) capture();
        bool insn_fire = cur_insn_valid && top->insn___05Fready;
        bool rd_req_fire = top->mem___05Frd_req___05Fvalid && cur_rd_req_ready;
        bool rd_data_fire = cur_read_beat && top->mem___05Frd_data___05Fready;
        bool wr_req_fire = top->mem___05Fwr_req___05Fvalid && cur_wr_req_ready;
        bool wr_data_fire = top->mem___05Fwr_data___05Fvalid && cur_wr_data_ready;
        bool ack_fire = cur_ack && top->mem___05Fwr_ack___05Fready;
        bool req_fire = cur_req_valid && top->req___05Fready;
        bool done_fire = cur_done_valid && top->done___05Fready;
        if (top->resp___05Fvalid) { uint32_t r[2] = {0}; get_sig(top->resp___05Fpayload, r); responses.push_back(r[0]); }
        if (top->batch___05Fvalid) { std::vector<uint32_t> w(8, 0); get_sig(top->batch___05Fpayload, w.data()); batch_words.push_back(std::move(w)); }
        if (insn_fire) instructions.pop_front();
        if (req_fire) requests.pop_front();
        if (done_fire) done_tags.pop_front();
        if (rd_req_fire) {
            uint64_t rd_req = top->mem___05Frd_req___05Fpayload;
            reads.push_back(Burst{rd_req & 0xFFFFFFFFu, (rd_req >> 32) & 0xFFFF, 0, now + read_latency});
        }
        if (rd_data_fire) {
            next_read_beat = now + read_interval;
            if (++reads.front().done == reads.front().len) reads.pop_front();
        }
        if (wr_req_fire) {
            uint64_t wr_req = top->mem___05Fwr_req___05Fpayload;
            writes.push_back(Burst{wr_req & 0xFFFFFFFFu, (wr_req >> 32) & 0xFFFF, 0, 0});
        }
        if (wr_data_fire) {
            uint32_t wr_data[16] = {0};
            get_sig(top->mem___05Fwr_data___05Fpayload, wr_data);
            Burst &b = writes.front();
            std::memcpy(word(b.addr + b.done), wr_data, word_bytes);
            next_write_beat = now + write_interval;
            if (++b.done == b.len) { acks.push_back(Burst{0, 0, 0, now + write_latency}); writes.pop_front(); }
        }
        if (ack_fire) acks.pop_front();
        ++now;
        drive();
        top->clk = 1; top->eval();
        top->clk = 0; top->eval();
    }

    void write_reg(uint32_t index, uint32_t value) {
        top->reg_addr = index; in_reg_wdata = value; in_reg_we = true;
        dirty = true;
        cycle();
        in_reg_we = false;
        dirty = true;
    }

    uint32_t reg(uint32_t index) {
        if (dirty) capture();
        top->reg_addr = index;
        top->eval();
        return top->reg_data;
    }

    // A value that changes whenever any unit makes progress (dispatch, words moved, MACs).
    uint32_t progress() { return reg(16 + 11) ^ reg(16 + 9) * 3 ^ reg(16 + 10) * 5 ^ reg(16 + 1) * 7 ^ reg(16 + 2) * 11; }

    void serve() {
        for (;;) {
            int command = std::fgetc(stdin);
            if (command == EOF) return;
            switch (command) {
            case 'W': {
                uint32_t addr = read_value<uint32_t>(), words = read_value<uint32_t>();
                if (static_cast<uint64_t>(addr) + words > dram_words) fail("write beyond --dram-words");
                read_exact(&dram[static_cast<uint64_t>(addr) * word_u32], static_cast<std::size_t>(words) * word_bytes);
                dirty = true;  // a read beat's data may have changed
                write_exact("K", 1);
                break;
            }
            case 'R': {
                uint32_t addr = read_value<uint32_t>(), words = read_value<uint32_t>();
                if (static_cast<uint64_t>(addr) + words > dram_words) fail("read beyond --dram-words");
                write_exact(&dram[static_cast<uint64_t>(addr) * word_u32], static_cast<std::size_t>(words) * word_bytes);
                break;
            }
            case 'I': {
                uint32_t count = read_value<uint32_t>();
                for (uint32_t i = 0; i < count; ++i) {
                    std::vector<uint32_t> insn(8);
                    read_exact(insn.data(), 32);
                    instructions.push_back(std::move(insn));
                }
                dirty = true;
                write_exact("K", 1);
                break;
            }
            case 'G': {
                uint32_t value = reg(read_value<uint32_t>());
                write_exact(&value, 4);
                break;
            }
            case 'P': {
                uint32_t index = read_value<uint32_t>(), value = read_value<uint32_t>();
                write_reg(index, value);
                write_exact("K", 1);
                break;
            }
            case 'B': {
                uint32_t count = read_value<uint32_t>();
                for (uint32_t i = 0; i < count; ++i) {
                    std::vector<uint32_t> request(4);
                    read_exact(request.data(), 16);
                    requests.push_back(std::move(request));
                }
                dirty = true;
                write_exact("K", 1);
                break;
            }
            case 'F': {
                uint32_t count = read_value<uint32_t>();
                for (uint32_t i = 0; i < count; ++i) done_tags.push_back(read_value<uint32_t>());
                dirty = true;
                write_exact("K", 1);
                break;
            }
            case 'E': {
                uint32_t n = static_cast<uint32_t>(responses.size());
                write_exact(&n, 4);
                for (uint32_t r : responses) write_exact(&r, 4);
                responses.clear();
                n = static_cast<uint32_t>(batch_words.size());
                write_exact(&n, 4);
                for (auto &w : batch_words) write_exact(w.data(), 32);
                batch_words.clear();
                break;
            }
            case 'S': {
                in_soft_reset = true; dirty = true; cycle(); in_soft_reset = false;
                instructions.clear(); reads.clear(); writes.clear(); acks.clear();
                requests.clear(); done_tags.clear(); responses.clear(); batch_words.clear();
                dirty = true;
                write_exact("K", 1);
                break;
            }
            case 'X': {
                uint64_t max_cycles = read_value<uint64_t>(), stall_limit = read_value<uint64_t>();
                uint8_t mode = read_value<uint8_t>();
                uint64_t start = now, quiet = 0;
                uint8_t reason = 3;
                if (dirty) capture();
                uint32_t last_progress = progress();
                while (now - start < max_cycles) {
                    if (top->error) { reason = 1; break; }
                    if (mode == 1 && !batch_words.empty()) { reason = 4; break; }
                    if (mode == 0 && top->idle && instructions.empty() && reads.empty() && writes.empty()
                        && acks.empty() && requests.empty() && done_tags.empty()) { reason = 0; break; }
                    if (((now - start) & 1023) == 1023) {
                        // Blocked: units wait on tokens, none runs, and no counter moved since the last look.
                        uint32_t p = progress();
                        bool blocked = mode == 0 && (reg(0) & 0x100) && instructions.empty();
                        quiet = (blocked && p == last_progress) ? quiet + 1024 : 0;
                        last_progress = p;
                        if (quiet >= stall_limit) { reason = 2; break; }
                    }
                    cycle();
                }
                uint64_t ran = now - start;
                write_exact(&reason, 1);
                write_exact(&ran, 8);
                break;
            }
            case 'Q':
                write_exact("K", 1);
                std::fflush(stdout);
                return;
            default:
                fail(std::string("unknown command byte ") + std::to_string(command));
            }
            std::fflush(stdout);
        }
    }
};

}  // namespace

int main(int argc, char **argv) {
    Harness harness(argc, argv);
    harness.serve();
    harness.top->final();
    return 0;
}
