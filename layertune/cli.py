"""``layertune`` command line: thin wrappers over train, sweep, baseline, the MLflow record and
export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .config import ConfigError, SettleConfig, TrialConfig, load_trial, parse_set
from .workers import Workers, add_worker_arguments, check_batch, worker_spec

if TYPE_CHECKING:
    from .train import TrialResult


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line ``error: ...`` and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _epoch_line(metrics: dict, epochs: int) -> str:
    m = metrics
    return (f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  "
            f"val_acc {m['val_accuracy']:.4f}  sections {m['active_layers']}/"
            f"{m['total_layers']}  undecided {m['undecided_layers']}  "
            f"{m['epoch_seconds']:.2f}s")


def _print_epoch(metrics: dict, epochs: int) -> None:
    print(_epoch_line(metrics, epochs), flush=True)


def train_command(args: argparse.Namespace) -> int:
    from .data import DataError
    from .formats import check_format
    from .progress import EpochProgress
    from .train import TrialDiverged, run_trial

    check_format(args.format)  # before training, not after
    if not args.progress_every > 0:
        raise ConfigError(f"--progress-every {args.progress_every}: give a number of seconds "
                          "above 0")
    overrides = parse_set(args.set or [])
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_trial(args.trial, overrides)
    out = Path(args.out or f"runs/{Path(args.trial).stem}").resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create folder ({err.strerror})") from None
    workers = worker_spec(args.workers_per_trial, args.cpus_per_worker, args.gpus_per_worker,
                          cpus_per_trial=1.0, gpus_per_trial=0.0, max_failures=args.max_failures)
    if workers is not None:
        check_batch(config, workers.count, args.trial)
        if config.device.startswith("cuda") and not workers.gpus:
            raise ConfigError(f"{args.trial}: device: {config.device} needs --gpus-per-worker > 0"
                              " (or device: auto)")
    print(f"layertune train {args.trial} -> {out}", flush=True)
    if workers is not None:
        return _train_on_workers(config, workers, out, args.format)
    try:
        result = run_trial(config, lambda m, _: _print_epoch(m, config.epochs),
                           progress=EpochProgress(every=args.progress_every))
    except DataError as err:  # raised while loading, before any training
        raise ConfigError(f"{args.trial}: data: {err}") from None
    except TrialDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(_write_train_result(result, out, args.format)))
    return 0


def _write_train_result(result: TrialResult, out: Path, fmt: str) -> list[str]:
    """result.json and the compact network into ``out``; the lines that say what was kept."""
    from .export import save_compact
    from .settle import settled_at

    (out / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    paths = save_compact(result.model, result.keep, out / "model", fmt)
    f = result.final
    pruned = ", ".join(f"{i} (epoch {e})" for i, e in sorted(result.pruned_at.items())) or "none"
    lines = [result.note] if result.note else []
    lines.append(f"kept {f['active_layers']}/{f['total_layers']} sections; removed: {pruned}")
    epochs = result.config["epochs"]
    rule = SettleConfig.model_validate(result.config["settle"])
    if (at := settled_at(result.history, rule)) is not None:
        cooled = f", then {f['epoch'] - at} to cool down" if f["epoch"] > at else ""
        lines.append(f"settled at epoch {at} of {epochs}{cooled}: the last {rule.epochs} "
                     f"validation accuracies vary by less than settle.std {rule.std:g}")
    if result.decided:
        decided = ", ".join(f"{i} ({t:.8g} -> {f['theta'][i]:g})"
                            for i, t in sorted(result.decided.items()))
        lines.append("gates still inside (0, 1) after the last epoch, set to the vertex where "
                     f"the objective is lower: {decided}")
    if result.test:
        lines.append(f"test accuracy {result.test['accuracy']:.4f}")
    lines.append(f"wrote {out / 'result.json'} and {paths['network']} ({fmt})")
    return lines


def _send_epoch(lines: Any, epochs: int, metrics: dict) -> None:  # on rank 0
    lines.put(_epoch_line(metrics, epochs))


def _send_result(lines: Any, out: Path, fmt: str, result: TrialResult) -> None:  # on rank 0
    lines.put("\n".join(_write_train_result(result, out, fmt)))


def _train_on_workers(config: TrialConfig, workers: Workers, out: Path, fmt: str) -> int:
    """``layertune train --workers-per-trial K``: a Ray Train run on the local Ray (or the one
    RAY_ADDRESS names). Rank 0 writes ``out`` and sends its lines through a Ray queue; this
    process prints them (Ray's own worker logs stay out of the way). The run's checkpoints
    (for restarts after a lost worker) live in a temporary folder."""
    import functools
    import logging
    import os
    import tempfile
    import threading

    import ray
    from ray.train import TrainingFailedError
    from ray.util.queue import Empty, Queue

    from .factory import modules_to_ship
    from .workers import run_on_workers

    if not ray.is_initialized():  # "local": never a cluster that happens to run here
        shipped = modules_to_ship(config)  # the user's factories, for workers on other nodes
        ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local",
                 logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"py_modules": shipped} if shipped else None)
    lines = Queue(actor_options={"num_cpus": 0})
    failed: list[BaseException] = []
    with tempfile.TemporaryDirectory(prefix="layertune-train-") as storage:
        diverged = Path(storage, "diverged.txt")

        def fit() -> None:
            try:
                run_on_workers(config, workers, storage, diverged=diverged,
                               on_epoch=functools.partial(_send_epoch, lines, config.epochs),
                               on_result=functools.partial(_send_result, lines, out, fmt))
            except BaseException as err:  # noqa: BLE001 (raised again below)
                failed.append(err)

        thread = threading.Thread(target=fit, daemon=True)
        thread.start()
        while thread.is_alive() or not lines.empty():
            try:
                print(lines.get(timeout=0.5), flush=True)
            except Empty:
                pass
        if failed and isinstance(failed[0], TrainingFailedError):
            print(f"error: {diverged.read_text() if diverged.exists() else failed[0]}",
                  file=sys.stderr)
            return 1
    if failed:
        raise failed[0]
    return 0


# --- reading a sweep back: front, export, ui -----------------------------------------------------


def _tracking_uri(args: argparse.Namespace) -> str:
    """Where sweep NAME is recorded: --tracking-uri, else mlflow.db in its sweep folder."""
    from .tracking import resolve_uri, sweep_folder

    folder = sweep_folder(args.name, args.storage)
    uri = resolve_uri(args.tracking_uri, folder)
    if uri is None:
        raise ConfigError("--tracking-uri none: give the URI the sweep was recorded in")
    if args.tracking_uri is None and not (folder / "mlflow.db").is_file():
        raise ConfigError(f"sweep {args.name}: no MLflow record at {folder / 'mlflow.db'} "
                          "(check the name, or give --storage or --tracking-uri)")
    return uri


def front_command(args: argparse.Namespace) -> int:
    import csv

    from .comparison import DOMINATED
    from .contract import GROUPS, RUNNING, STATUS
    from .front import format_table
    from .selection import load_sweep
    from .tracking import (
        BASELINE_GROUP,
        KIND,
        front_columns,
        front_versus_baseline,
        sweep_folder,
    )

    uri = _tracking_uri(args)
    record = load_sweep(args.name, uri)
    groups = record.groups
    cols = front_columns(record.objectives, record.parameters)
    folder = sweep_folder(args.name, args.storage)
    against, relogged = front_versus_baseline(uri, record.parent, folder, record.trials)
    front = [{c: r.get(c) for c in cols} for r in groups["front"]]
    if against is not None:
        front = against.mark(front)
        cols = [*cols, DOMINATED]
    if args.format == "json":
        print(json.dumps({"sweep": record.name, "tracking_uri": record.uri,
                          "objectives": record.objectives, "front": front,
                          "trials": {g: len(groups[g]) for g in GROUPS},
                          "baseline": against.to_json() if against else None}, indent=2))
        return 0
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(front)
        return 0
    running = sum(r[STATUS] == RUNNING for r in record.trials)
    finished = len(groups["front"]) + len(groups["finished"])
    print(f"sweep {record.name}: Pareto front ("
          + ", ".join(f"{m} {d}" for m, d in record.objectives)
          + f") of {finished} finished trials ({len(groups['stopped'])} stopped early, "
          f"{len(groups['failed'])} failed" + (f", {running} running" if running else "")
          + f"); {record.uri}")
    shown = [{**r, DOMINATED: "yes" if r[DOMINATED] else "no"} if against else r for r in front]
    print(format_table(shown, cols) if front else "(empty: no trial finished)")
    if against is None and record.parent.data.tags.get(KIND) == BASELINE_GROUP:
        return 0
    if against is None:
        trial = record.parent.data.params.get("trial", "TRIAL")
        print(f"\nno from-scratch baseline of this trial config beside {folder} (train one: "
              f"layertune baseline {trial}" + (f" --storage {folder.parent}/NAME" if
                                                args.storage else "") + ")")
        return 0
    b = against.baseline
    print(f"\nfrom-scratch baseline {b.name} ({b.path}), its front:")
    print(format_table(against.baseline_front,
                       ["sections", *[m for m, _ in record.objectives], "run_id"]))
    print(against.line())
    if relogged:
        print(f"the sweep run's pareto/front.png and front.html now show it ({record.uri})")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from .formats import FORMATS, check_format
    from .selection import ExportError, export_network, load_sweep, pick
    from .train import resolve_device

    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a folder; give a file name, e.g. "
                          f"model{FORMATS.get(args.format, '.pt2')}")
    check_format(args.format, out)
    try:
        device = str(resolve_device(args.device))
    except (ConfigError, RuntimeError, ValueError):
        raise ConfigError(f"--device {args.device}: allowed: cpu, cuda, cuda:N (with a GPU "
                          "torch can see) or auto") from None
    record = load_sweep(args.name, _tracking_uri(args))
    row = pick(record, trial=args.trial, use_knee=args.knee, min_accuracy=args.min_accuracy)
    print(f"sweep {record.name}: trial {row['trial']} (Ray {row['ray_trial']}, run "
          f"{row['run_id']}): val_accuracy {row.get('val_accuracy', float('nan')):.4f}, "
          f"{row.get('active_layers', '?')}/{row.get('total_layers', '?')} sections; "
          f"re-evaluating on its validation split ({device})", flush=True)
    try:
        checked = export_network(record, row, out, device=device, fmt=args.format)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {checked['path']} ({args.format}): val_accuracy "
          f"{checked['val_accuracy']:.4f} (recorded {checked['recorded_val_accuracy']:.4f}, "
          f"{checked['gap_points']:.3f} points apart)")
    return 0


def ui_command(args: argparse.Namespace) -> int:
    import os
    import shlex
    import signal
    import socket
    import subprocess
    import time

    from .tracking import find_sweeps, is_server, resolve_uri, server_command
    from .tracking.ui import child_kind, recorded_experiments, runs_page

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: a TCP port, 1 to 65535")
    if args.tracking_uri:
        uri = resolve_uri(args.tracking_uri, Path.cwd())
        if uri is None:
            raise ConfigError("--tracking-uri none: give the URI a sweep was recorded in")
        if is_server(uri):
            print(f"{uri} is an MLflow server already: open it in a browser")
            return 0
        targets = {args.name or "sweep": uri}
    else:
        root = Path(args.storage or "layertune-runs").expanduser().resolve()
        found = find_sweeps(root)  # --storage: a folder of sweep folders, or one of them
        if args.name and not (root / "mlflow.db").is_file():
            if args.name not in found:
                raise ConfigError(f"sweep {args.name}: no MLflow record in {root / args.name} "
                                  f"(sweeps in {root}: {', '.join(found) or 'none'})")
            found = {args.name: found[args.name]}
        if not found:
            raise ConfigError(f"--storage {root}: no sweep recorded there (a sweep folder holds "
                              "mlflow.db; run layertune sweep first)")
        targets = {name: f"sqlite:///{db}" for name, db in found.items()}
    servers = []
    for i, (name, uri) in enumerate(targets.items()):  # one server per sweep database
        port = args.port + i
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise ConfigError(f"--port {port}: in use on 127.0.0.1 (choose another --port)")
        servers.append((name, port, server_command(uri, port)))
    for (name, port, cmd), uri in zip(servers, targets.values(), strict=True):
        server = f"http://127.0.0.1:{port}"
        db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        pages = recorded_experiments(db) if db else {}
        print(f"sweep {name}: {server}\n  {shlex.join(cmd)}")
        for sweep, experiment_id in pages.items():
            page = runs_page(server, experiment_id, child_kind(db, experiment_id), db)
            print(f"  {sweep}: {page}")
    if args.dry_run:
        return 0
    print("the MLflow UI is starting; Ctrl-C stops it", flush=True)

    def stop(signum: int, frame: object) -> None:  # SIGTERM too: never orphan the servers
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    procs = [subprocess.Popen(cmd, start_new_session=True) for _, _, cmd in servers]
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        code = next(p.returncode for p in procs if p.poll() is not None)
        print(f"error: mlflow server exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:  # the server's own workers are in its process group
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def _add_record_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the sweep's --name")
    p.add_argument("--tracking-uri", help="where it was recorded (default sqlite:///"
                   "<sweep folder>/mlflow.db; an MLflow server http://host:port works from "
                   "any machine)")
    p.add_argument("--storage", help="its sweep folder (default ./layertune-runs/NAME)")


def _add_format_argument(p: argparse.ArgumentParser) -> None:
    from .formats import DEFAULT_FORMAT, FORMATS

    # no argparse choices: an unknown format gets the same one-line error as every bad input
    p.add_argument("--format", default=DEFAULT_FORMAT, metavar="|".join(FORMATS),
                   help="the compact network's file: export (torch.export, .pt2, the default), "
                   "onnx (ONNX Runtime, .onnx) or torchscript (.pt, deprecated by torch); "
                   "each runs with torch or onnxruntime alone, on any batch size")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="layertune",
        description="Concurrent training and layer pruning, and sweeps over it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="run one trial from a trial YAML")
    t.add_argument("trial", help="trial YAML (see trials/)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, e.g. --set optimizer.lr=0.1 (repeatable)")
    t.add_argument("--out", help="output folder (default runs/<trial name>)")
    t.add_argument("--seed", type=int, help="random seed (overrides the YAML)")
    t.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                   help="epochs longer than 5 s show their progress: a bar on a terminal, "
                   "else a line every SECONDS (default 30)")
    add_worker_arguments(t)
    t.add_argument("--max-failures", type=int, default=2, metavar="F",
                   help="with --workers-per-trial > 1: restarts of the workers after one "
                   "died, from the last epoch's checkpoint (default 2)")
    _add_format_argument(t)
    t.set_defaults(func=train_command)
    from .sweep import add_sweep_arguments, sweep_command

    w = sub.add_parser("sweep", help="search the method's knobs: Ray Tune + Optuna + gate collapse")
    add_sweep_arguments(w)
    w.set_defaults(func=sweep_command)
    from .sweep.cli import add_baseline_arguments, baseline_command

    b = sub.add_parser("baseline", help="train every depth from scratch: the front a sweep of "
                       "the same trial has to beat",
                       description="Trains the from-scratch grid of a trial (every depth with "
                       "its gates fixed, the trial's epochs; ResNets: every equal depth per "
                       "stage) as a Ray Tune run, recorded in MLflow (runs tagged "
                       "layertune.kind=baseline), into baseline.json beside the sweeps; "
                       "layertune front and a sweep's front.png / front.html then show it. "
                       "An existing baseline is reused (--recompute trains it again).")
    add_baseline_arguments(b)
    b.set_defaults(func=baseline_command)

    f = sub.add_parser("front", help="the Pareto front of a sweep, read back from MLflow")
    _add_record_arguments(f)
    f.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="output format (default table)")
    f.set_defaults(func=front_command)

    e = sub.add_parser("export", help="one network of a sweep for a runtime, re-checked first",
                       description="Pick a finished trial, re-evaluate its compact network on "
                       "the trial's validation split and write it (--format) if the "
                       "accuracy is within 0.1 point of the recorded one (else exit 1). "
                       "--knee: the front point nearest the utopia point once each objective "
                       "is scaled to [0, 1] over the front.")
    _add_record_arguments(e)
    how = e.add_mutually_exclusive_group(required=True)
    how.add_argument("--trial", metavar="ID", help="a finished trial: Optuna number, Ray trial "
                     "id or MLflow run id")
    how.add_argument("--knee", action="store_true", help="the knee of the front")
    how.add_argument("--min-accuracy", type=float, metavar="X", help="the front trial with "
                     "val_accuracy >= X (a fraction) that is best in the other objectives")
    e.add_argument("-o", "--out", required=True, help="file to write; its suffix is the "
                   "format's (.pt2, .onnx, .pt)")
    _add_format_argument(e)
    e.add_argument("--device", default="cpu", help="where to re-evaluate: cpu (default), "
                   "cuda, cuda:N or auto")
    e.set_defaults(func=export_command)

    u = sub.add_parser("ui", help="the MLflow UI over recorded sweeps, on 127.0.0.1",
                       description="Runs `mlflow server` bound to 127.0.0.1 over each sweep's "
                       "database (one server per sweep, on ports P, P+1, ...) and prints the "
                       "URLs and commands. Ctrl-C stops them.")
    u.add_argument("name", metavar="NAME", nargs="?", help="only this sweep (default: all)")
    u.add_argument("--storage", help="a folder of sweep folders, or one sweep folder (default "
                   "./layertune-runs)")
    u.add_argument("--tracking-uri", help="serve this database instead (an MLflow server URI "
                   "is printed: it is a UI already)")
    u.add_argument("--port", type=int, default=5000, help="first port (default 5000)")
    u.add_argument("--dry-run", action="store_true", help="print the commands, start nothing")
    u.set_defaults(func=ui_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
