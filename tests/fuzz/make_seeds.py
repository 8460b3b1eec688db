#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (committed; rerun
only to regenerate the seeds). Crash reproducers are added by hand as
corpus/<target>/crash-*; scripts/fuzz.sh replays every file."""
import json
import os
import struct
import sys

root = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(root))
sys.path.insert(0, os.path.join(repo, "clients", "python"))
from gdnserve_client._generated import generation_pb2 as pb  # noqa: E402


def write(target, name, data):
    d = os.path.join(root, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + nbytes]}
        blob += bytes(range(nbytes % 256)) + b"\0" * (nbytes - nbytes % 256)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blob


# safetensors_fuzz: byte 0 even = safetensors file, odd = config.json.
write("safetensors_fuzz", "st_two", b"\0" + safetensors({"a": ("F32", [2, 3], 24), "b": ("BF16", [4], 8)}, {"format": "pt"}))
write("safetensors_fuzz", "st_scalar", b"\0" + safetensors({"s": ("F16", [], 2)}))
write("safetensors_fuzz", "st_empty", b"\0" + safetensors({"z": ("F32", [0, 5], 0)}))
write("safetensors_fuzz", "st_overlap", b"\0" + struct.pack("<Q", 94) +
      b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}' + b"\0" * 8)
write("safetensors_fuzz", "st_huge_len", b"\0" + struct.pack("<Q", 2**63) + b"{}")
with open(os.path.join(repo, "models", "gdn2-tiny", "config.json"), "rb") as f:
    write("safetensors_fuzz", "config_tiny", b"\1" + f.read())
write("safetensors_fuzz", "config_min", b"\1" + b'{"vocab_size":16,"hidden_size":8,"num_hidden_layers":1}')
write("safetensors_fuzz", "config_bad", b"\1" + b'{"vocab_size":-1,"hidden_size":1e400}')

# generate_request_fuzz: serialized gdnserve.v1.GenerateRequest.
def req(**kw):
    return pb.GenerateRequest(**kw).SerializeToString()

write("generate_request_fuzz", "text", req(text="In the beginning", stop=pb.StopConditions(max_tokens=8)))
write("generate_request_fuzz", "ids", req(token_ids=pb.TokenIds(ids=[1, 5, 9, 4095]), n=2))
write("generate_request_fuzz", "sampling", req(text="x", sampling=pb.SamplingParams(
    temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.1, presence_penalty=0.5,
    frequency_penalty=-0.5, seed=7, logprobs=5)))
write("generate_request_fuzz", "stops", req(text="abc", stop=pb.StopConditions(
    max_tokens=4, stop=["\n", "the end"], stop_token_ids=[2], ignore_eos=True), request_id="r-1"))
write("generate_request_fuzz", "bad_ids", req(token_ids=pb.TokenIds(ids=[-1, 1 << 30])))
write("generate_request_fuzz", "bad_utf8_text", b"\x0a\x03\xff\xfe\x80")

# openai_request_fuzz: byte 0 even = /v1/completions, odd = chat.
comp = [
    {"model": "gdn2-tiny", "prompt": "Hello", "max_tokens": 5},
    {"prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0, "stop": ["\n"], "logprobs": 2},
    {"prompt": ["one"], "n": 2, "seed": 1, "top_p": 0.5, "top_k": 4, "min_p": 0.1, "stream": True,
     "stream_options": {"include_usage": True}},
    {"prompt": [[5, 6]], "echo": False, "ignore_eos": True, "stop_token_ids": [3], "repetition_penalty": 1.2},
    {"prompt": None, "max_tokens": -1},
]
for i, body in enumerate(comp):
    write("openai_request_fuzz", f"completions_{i}", b"\0" + json.dumps(body).encode())
chat = [
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                  {"role": "assistant", "content": "Hello"}], "max_completion_tokens": 3, "logprobs": True,
     "top_logprobs": 2, "frequency_penalty": 1.0, "presence_penalty": -1.0},
    {"messages": [], "tools": []},
]
for i, body in enumerate(chat):
    write("openai_request_fuzz", f"chat_{i}", b"\1" + json.dumps(body).encode())
write("openai_request_fuzz", "not_json", b"\0{\"prompt\": \"x\"")

# detokenizer_fuzz: byte 0 bit 0 = continuation, then (continuation) a prompt
# length byte, then little-endian u16 ids.
def ids(xs):
    return b"".join(struct.pack("<H", x) for x in xs)

write("detokenizer_fuzz", "text_ids", b"\0" + ids([1, 100, 200, 300, 400, 2]))
write("detokenizer_fuzz", "byte_fallback", b"\0" + ids(list(range(3, 40))))
write("detokenizer_fuzz", "continuation", b"\1\3" + ids([1, 50, 60, 70, 80, 90]))
write("detokenizer_fuzz", "out_of_range", b"\0" + ids([4095, 4096, 4099, 0, 65535]))

# stop_matcher_fuzz: byte 0 = number of stops; stops then chunks, 0xFF-separated.
def stops(n, parts):
    return bytes([n]) + b"\xff".join(p.encode() for p in parts)

write("stop_matcher_fuzz", "simple", stops(1, ["END", "hello E", "N", "D more"]))
write("stop_matcher_fuzz", "overlap", stops(2, ["abcd", "bc", "xa", "b", "cd"]))
write("stop_matcher_fuzz", "none", stops(0, ["free", " text"]))
write("stop_matcher_fuzz", "repeat", stops(1, ["aab", "a", "a", "a", "a", "b"]))
write("stop_matcher_fuzz", "utf8", stops(2, ["é!", "\n\n", "caf", "é", "\n", "\n"]))
