"""What checks the hardware: golden models, Verilog export and the cocotb harness."""
