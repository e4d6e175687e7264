"""The quantization core: dataclass configs, the config-type -> handler registry with ``quantize_``,
row-wise table packing, the quantized table and linear modules, and the precision names."""
