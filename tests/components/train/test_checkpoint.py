"""Our checkpoint files hold no pickles: the RNG state round-trips through safetensors."""

import torch

from components.train.checkpoint import load_rng_state, rng_file, save_rng_state


def test_rng_state_round_trips_without_pickle(tmp_path):
    path = rng_file(tmp_path, 3)
    torch.manual_seed(7)
    save_rng_state(path)
    expected = torch.rand(5)
    torch.rand(100)  # move the generator on
    load_rng_state(path)
    assert torch.equal(torch.rand(5), expected)
    assert path.name == "rng_rank3.safetensors"
    # A safetensors file: an 8-byte header length, then a JSON header; no pickle opcodes anywhere.
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and b"\x80\x02" not in raw[:16]
