"""The ``kvwire`` command: list codecs, encode a KV file to wire bytes, decode, inspect, recommend a codec
for a request from the published tables, and publish a run's tables as the paper's."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import wire
from .codecs import build, describe
from .errors import KvwireError, WireError
from .io import write_bytes
from .kv import KVRecord, load_kv, save_kv


def _cmd_codecs(args: argparse.Namespace) -> int:
    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:<12} {row['kind']:<20} {row['summary']}")
        for pname, p in row["params"].items():
            print(f"{'':<14}{pname} ({p['type']}, default {p['default']!r}): {p['help']}")
    print("\ncompose lossy and lossless stages with '+', e.g. int8+zstd "
          "(params keyed by stage: '{\"zstd\": {\"level\": 9}}')")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    params = json.loads(args.params) if args.params else {}
    if not isinstance(params, dict):
        raise KvwireError("--params must be a JSON object")
    codec = build(args.codec, params)
    record = load_kv(args.kv)
    meta = dict(record.meta, prefix_len=record.seq_len)
    data = wire.encode(codec, record.layers, meta, stats=record.stats or None)
    write_bytes(args.out, data)
    print(f"{args.out}: {len(data)} bytes, ratio {record.raw_bytes / len(data):.4f} ({codec.name})")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    header, layers = wire.decode(_read_container(args.wire))
    save_kv(args.out, KVRecord(layers=layers, meta=dict(header.meta, codec=header.codec)))
    print(f"{args.out}: {header.n_layers} layers decoded with {header.codec}")
    return 0


def _read_container(path: str) -> bytes:
    """The bytes of a wire container; a missing or unreadable file, or one that is not a kvwire container
    at all, is a ``KvwireError`` (a truncated or corrupted container is left to the reader to report)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise KvwireError(f"no such file: {path}") from exc
    except OSError as exc:
        raise KvwireError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data[:len(wire.MAGIC)] != wire.MAGIC:
        start = f"starts with {data[:len(wire.MAGIC)]!r}, not {wire.MAGIC!r}" if data else "is empty"
        raise WireError(f"{path} is not a kvwire container: it {start}")
    return data


def _failed_checks(report: dict) -> list[str]:
    """Every check of a ``wire.inspect`` report that is not ok: the container's checksum status (header,
    frames, trailer, trailing bytes) and any frame's own status; a check that is absent counts as failed."""
    failed = [] if report.get("checksum") == "ok" else [f"checksum: {report.get('checksum', 'not reported')}"]
    failed += [f"frame {f.get('layer')}: {f['checksum']}" for f in report.get("frames", [])
               if f.get("checksum", "ok") != "ok"]
    return failed


def _cmd_inspect(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when any check in it failed (the report is printed in full first)."""
    report = wire.inspect(_read_container(args.wire))
    failed = _failed_checks(report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 1 if failed else 0
    print(f"file:      {args.wire} ({report['total_bytes']} bytes)")
    head = report.get("header")
    if head:
        print(f"codec:     {head.get('codec')} {json.dumps(head.get('params'))}")
        layout = head.get("layout", {})
        shapes = layout.get("shapes", [])
        print(f"layout:    {len(shapes)} layers, {layout.get('dtype')}, [{layout.get('order')}] "
              f"{shapes[0] if shapes else ''}")
        print(f"meta:      {json.dumps(head.get('meta'))}")
    else:
        print("header:    unreadable")
    print(f"checksum:  {report.get('checksum', 'not reported')}")
    if "raw_bytes" in report:
        print(f"raw bytes: {report['raw_bytes']}  ratio: {report['ratio']:.4f}  "
              f"container overhead: {report['overhead_bytes']} bytes")
    for frame in report.get("frames", []):
        status = frame.get("checksum", "ok")
        print(f"  frame {frame['layer']:>3}: {frame['bytes']} bytes" + ("" if status == "ok" else f"  {status}"))
    if failed:
        print(f"result:    FAILED ({len(failed)} failed check{'s' if len(failed) > 1 else ''})")
    return 1 if failed else 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from .recommend import CachedTables, format_recommendation, parse_bandwidth, parse_shape, recommend

    rec = recommend(CachedTables(args.tables), args.model, args.prompt_tokens, parse_bandwidth(args.bandwidth),
                    gpu=args.gpu, floor=args.min_token_agreement,
                    shape=parse_shape(args.shape) if args.shape else None, latency_s=args.latency_us * 1e-6)
    if args.json:
        print(json.dumps({"model": rec.model, "prompt_tokens": rec.prompt_tokens, "bandwidth_gbps": rec.bandwidth_gbps,
                          "encoder": rec.encoder, "floor": rec.floor, "choice": rec.choice,
                          "expected_s": rec.expected_s, "raw_s": rec.raw_s, "notes": rec.notes,
                          "candidates": rec.candidates.to_dict(orient="records")}, indent=2))
    else:
        print(format_recommendation(rec))
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from .publish import publish, publish_update

    if args.update:
        manifest = publish_update(args.update, args.dest, config=args.config or None, note=args.note)
        print(f"replaced {', '.join(Path(t).name for t in args.update)} in {args.dest} "
              f"({len(manifest['updates'])} update(s) recorded in {args.dest}/PUBLISHED.json)")
        return 0
    manifest = publish(args.source, args.dest, config=args.config or None, note=args.note)
    print(f"published {len(manifest['tables'])} tables from {args.source} to {args.dest} "
          f"(cpu: {manifest['cpu'] or 'unknown'}; {args.dest}/PUBLISHED.json)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("codecs", help="list codecs and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_codecs)
    p = sub.add_parser("encode", help="encode a KV safetensors file into a wire container")
    p.add_argument("--codec", required=True)
    p.add_argument("--params", help="codec parameters as a JSON object")
    p.add_argument("kv")
    p.add_argument("out")
    p.set_defaults(func=_cmd_encode)
    p = sub.add_parser("decode", help="decode a wire container into a KV safetensors file")
    p.add_argument("wire")
    p.add_argument("out")
    p.set_defaults(func=_cmd_decode)
    p = sub.add_parser("inspect", help="show a container's header, frames, sizes and checksum status")
    p.add_argument("--json", action="store_true")
    p.add_argument("wire")
    p.set_defaults(func=_cmd_inspect)
    p = sub.add_parser("recommend", help="the fastest codec meeting a quality floor for one request, from the cached "
                                         "tables")
    p.add_argument("--model", required=True, help="a model of the cached tables (else give --shape)")
    p.add_argument("--prompt-tokens", type=int, required=True)
    p.add_argument("--bandwidth", required=True,
                   help="link rate with an exact, case-sensitive unit (decimal SI): bits/s as bps, kbps, Mbps, "
                        "Gbps, Tbps (also Gb/s, Gbit/s, likewise for each prefix), bytes/s as B/s, kB/s, MB/s, "
                        "GB/s, TB/s (1 GB/s = 8 Gbps); a bare number is Gbps. E.g. 25Gbps, 100GB/s, 1.6Tbps")
    p.add_argument("--gpu", help="encode on this GPU (e.g. h200); default: the CPU")
    p.add_argument("--min-token-agreement", type=float, default=0.95)
    p.add_argument("--shape", help="LAYERSxKV_HEADSxHEAD_DIM of a model the tables do not know")
    p.add_argument("--latency-us", type=float, default=0.0, help="one-way link latency")
    p.add_argument("--tables", default="paper/tables",
                   help="the tables to read: the published ones (default: paper/tables) or a run's own "
                        "(results/tables)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_recommend)
    p = sub.add_parser("publish", help="make a finished run's tables the paper's: copy results/tables to "
                                       "paper/tables with a manifest (machine, commit, config)")
    p.add_argument("--source", default="results/tables")
    p.add_argument("--dest", default="paper/tables")
    p.add_argument("--config", nargs="*", default=[],
                   help="the run's config file(s), in the order given to Snakemake (their sha256 go into the manifest)")
    p.add_argument("--note", default="", help="a line for the manifest (what run this is)")
    p.add_argument("--update", nargs="+", metavar="TABLE",
                   help="replace only these tables: ones measured apart from the study run (e2e_transfer.csv, "
                        "link_model.csv, cpu_scaling.csv, break_even_shift.csv, the GPU tables from committed device "
                        "timings), or all the tables of a "
                        "re-timing run together (break_even, transfer_sweep, break_even_all, gpu_transfer_sweep, "
                        "decision; --note required), recording each in the manifest's updates")
    p.set_defaults(func=_cmd_publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KvwireError as exc:
        print(f"kvwire: error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"kvwire: error: --params is not valid JSON ({exc})", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kvwire: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
