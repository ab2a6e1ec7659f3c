// Jalapeño scheduler traffic harness: the Verilator model of rtl/scheduler.py, clocked in
// C++ with a request source, a host taking responses and an engine model, so no Python
// runs per cycle (sim/scheduler_model.py builds it, writes the traffic and checks the trace).
//
// Verilator spells the double underscores of Amaranth's port names "___05F"; the request
// (101 bits) and batch-word (157 bits) payloads are VlWide arrays of 32-bit words.
//
// Command line: Vscheduler <traffic file> <trace file>
//
// Traffic file (text, whitespace-separated, written by sim/scheduler_model.py):
//   seed S                                   the PRNG seed (xoshiro256**, seeded by splitmix64)
//   config MAX_BATCH_ROWS MAX_WAIT WORK_CONSERVING AGING
//   ready RESP_PERCENT BATCH_PERCENT         chance (in %) that resp / batch is ready in a cycle
//   engine MIN MAX                           a batch takes a uniform MIN..MAX cycles plus its rows
//   batch_fields BATCH_OFF BATCH_W TOTAL_ROWS_OFF TOTAL_ROWS_W    (header bit 0, last bit 1)
//   request_bits N
//   limit CYCLES                             give up when `now` reaches this
//   requests COUNT
//   then COUNT lines: ARRIVAL W0 W1 ...      arrival cycle (of `now`), payload words in hex, low first
//
// Each cycle (inputs set, design settled, handshakes sampled, then the clock edge):
//   - the next request is offered (valid held until accepted) once `now` >= its arrival;
//   - resp.ready and batch.ready are random;
//   - the engine, when idle, takes a random one of the batches whose descriptors are
//     complete (so batches also complete out of dispatch order) and raises done with its
//     tag once its time has passed, until the tag is taken.
// It stops once every request has a final answer (a code other than ACCEPTED), or when
// `now` reaches the limit; then runs 3 idle cycles and reads the counters.
//
// Trace file (text), one line per handshake, in cycle order, cycles = `now` in that cycle:
//   S CYCLE INDEX          request INDEX (of the traffic file) accepted by req.ready
//   R CYCLE HEX            a response payload
//   B CYCLE HEX            a batch descriptor word
//   D CYCLE TAG            a done tag taken
//   C NAME VALUE           the counters, at the end
//   E STATUS CYCLE         STATUS = complete | limit; the last line
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "Vscheduler.h"
#include "verilated.h"

namespace {

[[noreturn]] void fail(const std::string &message) {
    std::fprintf(stderr, "scheduler harness: %s\n", message.c_str());
    std::exit(2);
}

// xoshiro256** (Blackman & Vigna), seeded by splitmix64.
struct Rng {
    uint64_t s[4];
    explicit Rng(uint64_t seed) {
        for (auto &word : s) {
            seed += 0x9E3779B97F4A7C15ull;
            uint64_t z = seed;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            word = z ^ (z >> 31);
        }
    }
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    uint64_t next() {
        uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
        s[2] ^= t; s[3] = rotl(s[3], 45);
        return result;
    }
    // 0 .. n-1 (n >= 1; the bias of the multiply-shift is below 2^-50 here)
    uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
    bool percent(unsigned p) { return below(100) < p; }
};

// All the words of a wide signal as one hexadecimal number (most significant first).
template <std::size_t N> std::string hex(const VlWide<N> &w) {
    std::string text;
    char buffer[9];
    for (std::size_t i = N; i-- > 0;) {
        std::snprintf(buffer, sizeof buffer, "%08" PRIx32, static_cast<uint32_t>(w[i]));
        text += buffer;
    }
    return text;
}

template <std::size_t N> uint64_t field(const VlWide<N> &w, unsigned offset, unsigned width) {
    uint64_t value = 0;
    for (unsigned b = 0; b < width; ++b) {
        unsigned bit = offset + b;
        if (bit / 32 >= N) fail("batch field beyond the payload");
        value |= static_cast<uint64_t>((w[bit / 32] >> (bit % 32)) & 1u) << b;
    }
    return value;
}

void expect(FILE *in, const char *keyword) {
    char word[64];
    if (std::fscanf(in, "%63s", word) != 1 || std::strcmp(word, keyword) != 0)
        fail(std::string("traffic file: expected '") + keyword + "'");
}

uint64_t number(FILE *in, bool hex_digits = false) {
    unsigned long long value;
    if (std::fscanf(in, hex_digits ? "%llx" : "%llu", &value) != 1) fail("traffic file: expected a number");
    return value;
}

struct Request { uint64_t arrival; std::vector<uint32_t> words; };
struct Batch { uint32_t tag; uint64_t rows; };

}  // namespace

int main(int argc, char **argv) {
    if (argc != 3) fail("usage: Vscheduler <traffic file> <trace file>");
    FILE *in = std::fopen(argv[1], "r");
    if (!in) fail(std::string("cannot open ") + argv[1]);

    auto context = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vscheduler>(context.get());
    constexpr std::size_t REQ_WORDS = sizeof(top->req___05Fpayload) / sizeof(top->req___05Fpayload[0]);

    expect(in, "seed"); Rng rng(number(in));
    expect(in, "config");
    top->max_batch_rows = static_cast<SData>(number(in));
    top->max_wait_cycles = static_cast<IData>(number(in));
    top->work_conserving = static_cast<CData>(number(in));
    top->aging_cycles = static_cast<IData>(number(in));
    expect(in, "ready");
    unsigned resp_percent = static_cast<unsigned>(number(in)), batch_percent = static_cast<unsigned>(number(in));
    expect(in, "engine");
    uint64_t engine_min = number(in), engine_max = number(in);
    if (engine_max < engine_min) fail("engine MAX < MIN");
    expect(in, "batch_fields");
    unsigned batch_off = static_cast<unsigned>(number(in)), batch_w = static_cast<unsigned>(number(in));
    unsigned rows_off = static_cast<unsigned>(number(in)), rows_w = static_cast<unsigned>(number(in));
    expect(in, "request_bits");
    unsigned request_bits = static_cast<unsigned>(number(in));
    if ((request_bits + 31) / 32 != REQ_WORDS) fail("request_bits does not match the model's request port");
    expect(in, "limit");
    uint64_t limit = number(in);
    expect(in, "requests");
    std::vector<Request> requests(number(in));
    for (auto &r : requests) {
        r.arrival = number(in);
        for (std::size_t i = 0; i < REQ_WORDS; ++i) r.words.push_back(static_cast<uint32_t>(number(in, true)));
    }
    std::fclose(in);

    FILE *out = std::fopen(argv[2], "w");
    if (!out) fail(std::string("cannot open ") + argv[2]);
    static char out_buffer[1 << 20];
    std::setvbuf(out, out_buffer, _IOFBF, sizeof out_buffer);

    // Reset: 3 clock cycles.
    top->clk = 0; top->rst = 1;
    top->req___05Fvalid = 0; top->resp___05Fready = 0; top->batch___05Fready = 0; top->done___05Fvalid = 0;
    top->eval();
    for (int i = 0; i < 3; ++i) { top->clk = 1; top->eval(); top->clk = 0; top->eval(); }
    top->rst = 0;
    top->eval();

    std::size_t next_request = 0, answered = 0;
    std::vector<Batch> pending;           // batches whose descriptors are complete, waiting for the engine
    Batch current{0, 0};                  // the header of the descriptor being received
    bool engine_busy = false;
    Batch engine{0, 0};
    uint64_t engine_until = 0;
    uint64_t now = 0;
    bool complete = false;
    for (;;) {
        now = top->now;
        // request source
        bool req_valid = next_request < requests.size() && requests[next_request].arrival <= now;
        top->req___05Fvalid = req_valid;
        if (req_valid)
            for (std::size_t i = 0; i < REQ_WORDS; ++i) top->req___05Fpayload[i] = requests[next_request].words[i];
        top->resp___05Fready = rng.percent(resp_percent);
        top->batch___05Fready = rng.percent(batch_percent);
        // engine model: one batch at a time, a random one of the waiting batches
        if (!engine_busy && !pending.empty()) {
            std::size_t pick = rng.below(pending.size());
            engine = pending[pick];
            pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(pick));
            engine_busy = true;
            engine_until = now + engine_min + rng.below(engine_max - engine_min + 1) + engine.rows;
        }
        bool done_valid = engine_busy && now >= engine_until;
        top->done___05Fvalid = done_valid;
        if (done_valid) top->done___05Fpayload = static_cast<CData>(engine.tag);
        top->eval();
        // handshakes of this cycle
        if (req_valid && top->req___05Fready) {
            std::fprintf(out, "S %" PRIu64 " %zu\n", now, next_request);
            ++next_request;
        }
        if (top->resp___05Fvalid && top->resp___05Fready) {
            uint32_t value = top->resp___05Fpayload;
            std::fprintf(out, "R %" PRIu64 " %" PRIx32 "\n", now, value);
            if ((value >> 16) & 0x7) ++answered;   // any final answer (not ACCEPTED)
        }
        if (top->batch___05Fvalid && top->batch___05Fready) {
            const auto &word = top->batch___05Fpayload;
            std::fprintf(out, "B %" PRIu64 " %s\n", now, hex(word).c_str());
            // header (bit 0) and last (bit 1): rtl/scheduler.py, batch_word_layout
            if (field(word, 0, 1)) {
                current = Batch{static_cast<uint32_t>(field(word, batch_off, batch_w)), field(word, rows_off, rows_w)};
            } else if (field(word, 1, 1)) {
                pending.push_back(current);
            }
        }
        if (done_valid && top->done___05Fready) {
            std::fprintf(out, "D %" PRIu64 " %u\n", now, engine.tag);
            engine_busy = false;
        }
        if (next_request == requests.size() && answered == requests.size()) { complete = true; break; }
        if (now >= limit) break;
        top->clk = 1; top->eval();
        top->clk = 0; top->eval();
    }

    // Let the counters settle (no handshakes), then read them.
    top->req___05Fvalid = 0; top->resp___05Fready = 0; top->batch___05Fready = 0; top->done___05Fvalid = 0;
    for (int i = 0; i < 3; ++i) { top->clk = 1; top->eval(); top->clk = 0; top->eval(); }
    std::fprintf(out, "C accepted %" PRIu32 "\n", static_cast<uint32_t>(top->accepted));
    std::fprintf(out, "C rejected %" PRIu32 "\n", static_cast<uint32_t>(top->rejected));
    std::fprintf(out, "C timed_out %" PRIu32 "\n", static_cast<uint32_t>(top->timed_out));
    std::fprintf(out, "C batches %" PRIu32 "\n", static_cast<uint32_t>(top->batches));
    std::fprintf(out, "C batched_rows %" PRIu32 "\n", static_cast<uint32_t>(top->batched_rows));
    std::fprintf(out, "C max_wait %" PRIu32 "\n", static_cast<uint32_t>(top->max_wait));
    std::fprintf(out, "C total_wait %" PRIu64 "\n", static_cast<uint64_t>(top->total_wait));
    std::fprintf(out, "C bad_done %" PRIu32 "\n", static_cast<uint32_t>(top->bad_done));
    std::fprintf(out, "E %s %" PRIu64 "\n", complete ? "complete" : "limit", now);
    if (std::fclose(out) != 0) fail("cannot write the trace");
    top->final();
    return 0;
}
