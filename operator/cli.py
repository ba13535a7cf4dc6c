"""The ``infernetes`` command: ``serve``, ``operator``, ``gateway``, ``models``, ``api-keys``, ``crd``, ``worker``.

``infernetes serve`` runs the embedded product on one machine: the REST gateway plus one worker
process per allocation, with endpoint definitions in SQLite under the data directory.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir

DEFAULT_PORT = 9200


def default_data_dir() -> Path:
    return Path(os.environ.get("INFERNETES_DATA_DIR") or user_data_dir("infernetes", appauthor=False))


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where models, endpoint definitions and logs live (default: $INFERNETES_DATA_DIR, "
        f"else {default_data_dir()})",
    )


def _data_dir(args: argparse.Namespace) -> Path:
    path = (args.data_dir or default_data_dir()).expanduser().resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)  # endpoint definitions, keys and logs: this user's only
    return path


def _data_dir_problem(data_dir: Path | None, exc: OSError) -> str:
    """What is wrong with the data directory and what to do, for a start-up error (no traceback)."""
    where = data_dir or "the data directory"
    what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return (f"infernetes: cannot use the data directory [{where}] ({what}). Make it writable by this user "
            "(check its permissions, that its file system is mounted read-write and has space), or choose "
            "another with --data-dir or $INFERNETES_DATA_DIR.")


# -- serve ------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..worker.modelstore import ModelStore
    from .store import StoreOpenError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "transformers", "huggingface_hub", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    data_dir = None
    try:
        data_dir = _data_dir(args)
        lock = open(data_dir / "serve.lock", "w")  # noqa: SIM115 - held for the life of the process
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"infernetes: another `infernetes serve` is using {data_dir}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(_data_dir_problem(data_dir, exc), file=sys.stderr)
        return 1
    if args.demo:
        from .demo import install_demo_models

        from .demo import training_progress

        for line in install_demo_models(ModelStore(data_dir / "models"), progress=training_progress(sys.stdout)):
            print(line, flush=True)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("infernetes: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        auth = _serve_auth(args, data_dir)
        app = _build_serve_app(args, data_dir, auth)
    except StoreOpenError as exc:
        print(f"infernetes: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(_data_dir_problem(data_dir, exc), file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad $INFERNETES_MAX_ALLOCATED_PROCESSORS
        print(f"infernetes: {exc}", file=sys.stderr)
        return 2
    scheme = "https" if args.tls_cert else "http"
    print(f"Infernetes serving the Elasticsearch inference API on {scheme}://{args.host}:{args.port} "
          f"(data in {data_dir}; API keys {'required' if auth else 'off'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                timeout_graceful_shutdown=35, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    return 0


def _build_serve_app(args: argparse.Namespace, data_dir: Path, auth: Any) -> Any:
    from .autoscaler import AutoscalerSettings
    from .embedded import EmbeddedOptions, build_app
    from .gateway import GatewaySettings

    return build_app(
        data_dir,
        EmbeddedOptions(
            max_inputs=args.max_inputs, queue_capacity=args.queue_capacity, worker_log_level=args.worker_log_level,
            model_hub=args.model_hub, gateway=GatewaySettings(auth=auth), hold_timeout_s=args.hold_timeout,
            autoscaler=AutoscalerSettings(interval_s=args.autoscale_interval,
                                          scale_down_window_s=args.scale_down_window,
                                          idle_to_zero_s=args.scale_to_zero_after),
            max_allocated_processors=args.max_allocated_processors,
        ),
    )


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _serve_auth(args: argparse.Namespace, data_dir: Path) -> Any:
    """API keys: on by default unless the gateway listens on loopback only."""
    from .auth import MANAGE, Authenticator, KeyFile

    enabled = args.auth == "on" or (args.auth == "auto" and args.host not in LOOPBACK)
    if not enabled:
        return None
    keys = KeyFile(data_dir / "api-keys.json")
    if not keys.keys():
        # Like Elasticsearch's first start: a key to begin with. It goes to a private file, never to the logs.
        key, encoded = keys.add("bootstrap", [MANAGE])
        bootstrap = data_dir / "bootstrap-api-key"
        bootstrap.write_text(encoded + "\n")
        bootstrap.chmod(0o600)
        print(f"API keys are required. A first key with [{MANAGE}] (id {key.id}) is in {bootstrap}: send it as "
              f"`Authorization: ApiKey $(cat {bootstrap})`. Create more with `infernetes api-keys create`.",
              flush=True)
    return Authenticator(keys)


def _keyfile(args: argparse.Namespace) -> Any:
    from .auth import KeyFile

    return KeyFile(args.file if args.file else _data_dir(args) / "api-keys.json")


def cmd_api_keys_create(args: argparse.Namespace) -> int:
    try:
        key, encoded = _keyfile(args).add(args.name, args.privilege or ["monitor_inference"])
    except ValueError as exc:
        print(f"infernetes: {exc}", file=sys.stderr)
        return 2
    import json

    print(json.dumps({"id": key.id, "name": key.name, "privileges": key.privileges, "encoded": encoded}))
    return 0


def cmd_api_keys_list(args: argparse.Namespace) -> int:
    for key in _keyfile(args).keys().values():
        print(f"{key.id}  {key.name}  {','.join(key.privileges)}")
    return 0


def cmd_api_keys_delete(args: argparse.Namespace) -> int:
    if not _keyfile(args).remove(args.id):
        print(f"infernetes: no API key with id [{args.id}]", file=sys.stderr)
        return 1
    print(f"deleted API key [{args.id}]")
    return 0


# -- models -----------------------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> Any:
    from ..worker.modelstore import ModelStore

    return ModelStore(_data_dir(args) / "models")


def _progress(prefix: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, unit="B", unit_scale=True, desc=prefix, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return update


def cmd_models_import(args: argparse.Namespace) -> int:
    from ..worker.modelstore import ModelStoreError

    prompts = {}
    for item in args.prompt or []:
        key, _, value = item.partition("=")
        if key.upper() not in ("SEARCH", "INGEST", "CLASSIFICATION", "CLUSTERING") or not _:
            print(f"infernetes: --prompt expects INPUT_TYPE=TEXT, got [{item}]", file=sys.stderr)
            return 2
        prompts[key.upper()] = value
    overrides: dict[str, Any] = {"prompts": prompts or None, "max_seq_length": args.max_seq_length}
    if args.matryoshka_dimensions:
        try:
            dims = sorted({int(d) for d in args.matryoshka_dimensions.split(",")}, reverse=True)
        except ValueError:
            dims = []
        if not dims or dims[-1] < 1:
            print(f"infernetes: --matryoshka-dimensions expects sizes such as 256,128,64, got "
                  f"[{args.matryoshka_dimensions}]", file=sys.stderr)
            return 2
        overrides["options"] = {"matryoshka_dimensions": dims}
    store = _store(args)
    if not args.replace and store.get(args.model_id) is not None:
        print(f"infernetes: model [{args.model_id}] is already in the store; add --replace to overwrite it "
              f"(or choose another --model-id)", file=sys.stderr)
        return 1
    try:
        info = store.import_folder(
            args.source, args.model_id, task_type=args.task, overrides=overrides, replace=args.replace,
            progress=_progress(f"importing {args.model_id}"),
        )
    except ModelStoreError as exc:
        print(f"infernetes: {exc}", file=sys.stderr)
        return 1
    print(f"imported [{info.model_id}]: task {info.task_type}, {info.kind}, max_seq_length {info.max_seq_length}"
          + (f", {info.dimensions} dimensions" if info.dimensions else "")
          + (f", prompts {info.prompts}" if info.prompts else ""))
    return 0


def _pull(args: argparse.Namespace, store: Any) -> int:
    """Download with a progress bar on a terminal, and progress lines in a pod's log."""
    from tqdm import tqdm

    from ..worker.download import DownloadError, Progress, pull
    from ..worker.elastic_repository import pull_elastic, repository_url

    interactive = sys.stderr.isatty()
    bar = tqdm(total=0, unit="B", unit_scale=True, desc=f"pulling {args.model_id}", disable=None)
    last_line = [-1]

    def show(p: Progress) -> None:
        if bar.total != p.total_bytes:
            bar.total = p.total_bytes
        bar.n = p.downloaded_bytes
        bar.refresh()
        pct = int(p.as_dict()["percent"])
        if not interactive and p.total_bytes and pct // 10 != last_line[0]:
            last_line[0] = pct // 10
            print(f"pulling {args.model_id}: {p.downloaded_bytes / 1e6:.0f}/{p.total_bytes / 1e6:.0f} MB ({pct}%)",
                  file=sys.stderr, flush=True)

    repository = getattr(args, "repository", None) or repository_url()
    try:
        if repository and args.repo is None:  # Elastic's layout: {name}.metadata.json, {name}.pt, {name}.vocab.json
            info = pull_elastic(store, args.model_id, repository, progress=Progress(args.model_id, on_change=show))
        else:
            info = pull(store, args.model_id, repo_id=args.repo, revision=args.revision, task_type=args.task,
                        endpoint=args.hub, progress=Progress(args.model_id, on_change=show))
    except DownloadError as exc:
        bar.close()
        print(f"infernetes: {exc}", file=sys.stderr)
        _termination_message(str(exc))
        return 1
    bar.close()
    print(f"pulled [{info.model_id}]: task {info.task_type}, {info.kind}, {info.size_bytes / 1e6:.0f} MB "
          f"from {info.source}")
    return 0


def _termination_message(message: str) -> None:
    """In a pod, say why in the container's termination message (kubectl describe, the CR status)."""
    path = Path(os.environ.get("INFERNETES_TERMINATION_LOG", "/dev/termination-log"))
    if path.parent.is_dir() and (path.exists() or "INFERNETES_TERMINATION_LOG" in os.environ):
        try:
            path.write_text(message[:4000])
        except OSError:
            pass


def cmd_models_pull(args: argparse.Namespace) -> int:
    from ..worker.download import builtin
    from ..worker.elastic_repository import repository_url

    store = _store(args)
    if store.get(args.model_id) is not None and not args.replace:
        print(f"[{args.model_id}] is already in the store (use --replace to download it again)")
        return 0
    if args.repo is None and builtin(args.model_id) is None and not (args.repository or repository_url()):
        print(f"infernetes: [{args.model_id}] is not a built-in model; give --repo ORG/NAME, or --repository "
              "for Elastic's model repository", file=sys.stderr)
        return 2
    return _pull(args, store)


def cmd_models_ensure(args: argparse.Namespace) -> int:
    """The init container of worker pods: make sure the model is in the (possibly shared) store."""
    from ..worker.download import builtin, canonical_id

    store = _store(args)
    info = store.get(canonical_id(args.model_id))
    if info is None and args.seed_dir:
        from ..worker.modelstore import ModelStore

        seeded = ModelStore(Path(args.seed_dir) / "models").get(canonical_id(args.model_id))
        if seeded is not None:
            info = store.import_folder(seeded.path, seeded.model_id, task_type=seeded.task_type,
                                       overrides={"prompts": seeded.prompts or None})
            print(f"[{info.model_id}] copied from the image's model store {args.seed_dir}")
            return 0
    if info is not None:
        problems = store.verify(info.model_id) if args.verify else []
        if not problems:
            print(f"[{info.model_id}] is in the model store ({info.size_bytes / 1e6:.0f} MB)")
            return 0
        print(f"[{info.model_id}] is damaged ({', '.join(problems)}): downloading it again", file=sys.stderr)
    if args.repo is None and builtin(args.model_id) is None and not args.repository:
        message = (f"Could not find trained model [{args.model_id}] in the model store, and it is not a built-in model: "
                   "import it into the model cache, declare its hub repository in the operator's models settings, "
                   "or upload it with Eland to a gateway that has an upload volume")
        print(f"infernetes: {message}", file=sys.stderr)
        _termination_message(message)
        return 1
    args.replace = True
    return _pull(args, store)


def cmd_models_optimize(args: argparse.Namespace) -> int:
    from ..worker.modelstore import ModelStoreError
    from ..worker.optimize import optimize

    try:
        info, cosine = optimize(_store(args), args.source_id, args.model_id, quantize=args.quantize,
                                replace=args.replace)
    except (ModelStoreError, ImportError) as exc:
        print(f"infernetes: {exc}", file=sys.stderr)
        return 1
    check = {"text_embedding": f"lowest cosine similarity to the original on the calibration set {cosine:.4f}",
             "sparse_embedding": f"lowest top-k token overlap with the original on the calibration set {cosine:.3f}",
             "rerank": f"largest score difference from the original on the calibration set {1 - cosine:.4f}"}
    print(f"optimized [{info.model_id}] from [{args.source_id}]: ONNX Runtime"
          f"{', int8 weights' if args.quantize else ''}, {info.size_bytes / 1e6:.0f} MB; {check[info.task_type]}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    rows = [(m.model_id, m.task_type, m.kind, m.backend, str(m.dimensions or "-"), str(m.max_seq_length or "-"),
             f"{m.size_bytes / 1e6:.0f} MB") for m in _store(args).list()]
    header = ("MODEL ID", "TASK", "KIND", "BACKEND", "DIMS", "MAX LEN", "SIZE")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_models_remove(args: argparse.Namespace) -> int:
    if not _store(args).remove(args.model_id):
        print(f"infernetes: model [{args.model_id}] is not in the store", file=sys.stderr)
        return 1
    print(f"removed [{args.model_id}]")
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from .kube.main import run

    return run(args.namespace or [], host=args.host, port=args.port, gateway=not args.no_gateway,
               kubeconfig=args.kubeconfig, config_path=args.config, liveness_port=args.liveness_port,
               log_level=args.log_level, lease_name=args.leader_election_lease,
               lease_namespace=args.leader_election_namespace, access_log=args.access_log)


def cmd_gateway(args: argparse.Namespace) -> int:
    from .kube.main import run_gateway

    return run_gateway(args.namespace, host=args.host, port=args.port, kubeconfig=args.kubeconfig,
                       config_path=args.config, log_level=args.log_level, access_log=args.access_log)


def cmd_crd(args: argparse.Namespace) -> int:
    from .kube.crd import CRDS, render

    if args.out_dir is None:
        print("---\n".join(render(build()) for build in CRDS.values()), end="")
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for filename, build in CRDS.items():
        (args.out_dir / filename).write_text(render(build()))
        print(f"wrote {args.out_dir / filename}")
    return 0


# -- parser ------------------------------------------------------------------------------------------

DESCRIPTION = ("Elasticsearch-compatible inference endpoints (text embeddings, sparse embeddings,\n"
               "reranking), served on this machine or in Kubernetes.")
EPILOG = """\
getting started:
  infernetes serve --demo          the server on http://127.0.0.1:9200, with demo models
  infernetes models list           the models endpoints can use
  infernetes COMMAND --help        the options of a command
"""


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got [{value}]")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infernetes", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway and worker processes on this machine")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    _data_dir_arg(serve)
    serve.add_argument("--demo", action="store_true",
                       help="import the demo models shipped by installed PyPI packages into the model store")
    serve.add_argument("--max-inputs", type=int, default=1024, help="inputs per inference request (default 1024)")
    serve.add_argument("--queue-capacity", type=int, default=1024,
                       help="inputs waiting per allocation before 429 (default 1024)")
    serve.add_argument("--model-hub", help="where built-in models download from (default: $INFERNETES_MODEL_HUB, "
                       "$HF_ENDPOINT, else https://huggingface.co)")
    serve.add_argument("--autoscale-interval", type=float, default=2.0, metavar="SECONDS",
                       help="adaptive allocations: sampling and decision interval (default 2)")
    serve.add_argument("--scale-down-window", type=float, default=30.0, metavar="SECONDS",
                       help="adaptive allocations: scale down only to the highest need of this window (default 30)")
    serve.add_argument("--scale-to-zero-after", type=float, default=300.0, metavar="SECONDS",
                       help="adaptive allocations with min 0: idle time before scaling to zero (default 300)")
    serve.add_argument("--hold-timeout", type=float, default=120.0, metavar="SECONDS",
                       help="how long a request waits for a first allocation to start (default 120)")
    serve.add_argument("--auth", choices=["auto", "on", "off"], default="auto",
                       help="API keys: auto = required unless --host is loopback (default auto)")
    serve.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="log level of the gateway (default info)")
    serve.add_argument("--worker-log-level", default="warning", choices=["debug", "info", "warning", "error"],
                       help="log level of the worker processes, in <data-dir>/logs/ (default warning)")
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request")
    serve.add_argument("--max-allocated-processors", type=_positive_int, metavar="N",
                       help="allocations x threads one deployment may use (all together: 16 x N); more is refused "
                            "with 429; above the CPUs it overcommits on purpose (default: "
                            "$INFERNETES_MAX_ALLOCATED_PROCESSORS, else the CPUs this process may use)")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("api-keys", help="manage the gateway's API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key; prints its encoded credential once")
    kc.add_argument("--name", required=True, help="a name to recognise the key by (not secret)")
    kc.add_argument("--privilege", action="append", choices=["manage_inference", "monitor_inference"],
                    help="repeatable; default monitor_inference (read and run inference)")
    kl = ksub.add_parser("list", help="list keys (ids, names, privileges; never secrets)")
    kd = ksub.add_parser("delete", help="delete a key")
    kd.add_argument("id", help="the key's id (see: infernetes api-keys list)")
    for p, fn in ((kc, cmd_api_keys_create), (kl, cmd_api_keys_list), (kd, cmd_api_keys_delete)):
        _data_dir_arg(p)
        p.add_argument("--file", type=Path, help="the keys file (default <data-dir>/api-keys.json); for a "
                       "Kubernetes Secret: kubectl create secret generic NAME --from-file=api-keys.json=FILE")
        p.set_defaults(func=fn)

    worker = sub.add_parser("worker", help="serve one allocation of one model (what the runtimes start)",
                            add_help=False)
    worker.set_defaults(func=None)

    op = sub.add_parser("operator", help="run the Kubernetes operator and its REST gateway (in a cluster)")
    op.add_argument("--namespace", "-n", action="append",
                    help="namespace to watch (repeatable); all namespaces when none is given. The REST gateway "
                    "serves the first one (or the pod's own namespace)")
    op.add_argument("--host", default="0.0.0.0", help="address of the REST gateway (default 0.0.0.0)")  # noqa: S104
    op.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port of the REST gateway (default {DEFAULT_PORT})")
    op.add_argument("--no-gateway", action="store_true", help="run the operator only")
    op.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster credentials, else $KUBECONFIG)")
    op.add_argument("--config", type=Path, help="operator settings file (default $INFERNETES_OPERATOR_CONFIG)")
    op.add_argument("--liveness-port", type=int, help="serve kopf's liveness probe on this port")
    op.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="log level of the operator and the gateway (default info)")
    op.add_argument("--access-log", action="store_true", help="the gateway logs every HTTP request")
    op.add_argument("--leader-election-lease", metavar="NAME",
                    help="lead through this coordination.k8s.io Lease: only its holder reconciles, so several "
                    "replicas are safe (default: no election, a single replica)")
    op.add_argument("--leader-election-namespace", metavar="NAMESPACE",
                    help="namespace of the Lease (default $POD_NAMESPACE, else the kubeconfig's)")
    op.set_defaults(func=cmd_operator)

    gw = sub.add_parser("gateway", help="run the REST gateway alone (in a cluster; the operator runs elsewhere)")
    gw.add_argument("--namespace", "-n", help="namespace whose endpoints it serves (default "
                    "$INFERNETES_GATEWAY_NAMESPACE, else the pod's or the kubeconfig's)")
    gw.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    gw.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    gw.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster credentials, else $KUBECONFIG)")
    gw.add_argument("--config", type=Path, help="operator settings file (default $INFERNETES_OPERATOR_CONFIG)")
    gw.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="log level (default info)")
    gw.add_argument("--access-log", action="store_true", help="log every HTTP request")
    gw.set_defaults(func=cmd_gateway)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinitions (generated from the spec models)")
    crd.add_argument("--out-dir", type=Path, help="write one file per CRD here instead of printing them")
    crd.set_defaults(func=cmd_crd)

    models = sub.add_parser("models", help="manage the model store")
    msub = models.add_subparsers(dest="models_command", required=True)
    imp = msub.add_parser("import", help="import a local sentence-transformers, cross-encoder or SPLADE folder")
    imp.add_argument("source", type=Path, help="model folder (safetensors weights, config, tokenizer)")
    imp.add_argument("--model-id", required=True, help="the id endpoints will use as model_id")
    imp.add_argument("--task", choices=["text_embedding", "sparse_embedding", "rerank"],
                     help="check the folder serves this task (detected otherwise)")
    imp.add_argument("--prompt", action="append", metavar="INPUT_TYPE=TEXT",
                     help='prompt per input type, e.g. --prompt SEARCH="query: " (default: from the model config)')
    imp.add_argument("--max-seq-length", type=int, help="truncate inputs to this many tokens")
    imp.add_argument("--matryoshka-dimensions", metavar="N,N,...",
                     help="output sizes the model was trained for (Matryoshka); allows dimensions on "
                          "/v1/embeddings and TEI's /embed")
    imp.add_argument("--replace", action="store_true", help="replace a model with the same id")
    _data_dir_arg(imp)
    imp.set_defaults(func=cmd_models_import)
    pl = msub.add_parser("pull", help="download a built-in model (or any hub repository) into the store")
    pl.add_argument("model_id", help="e.g. .multilingual-e5-small, .elser_model_2, .rerank-v1")
    pl.add_argument("--repo", help="hub repository to download (default: the built-in model's)")
    pl.add_argument("--revision", help="branch, tag or commit (default: the built-in model's, else main)")
    pl.add_argument("--task", choices=["text_embedding", "sparse_embedding", "rerank"],
                    help="check the repository serves this task (detected otherwise)")
    pl.add_argument("--hub", help="hub URL (default: $INFERNETES_MODEL_HUB, $HF_ENDPOINT, else huggingface.co)")
    pl.add_argument("--repository", help="Elastic's model repository (https://, http:// or file:// URL holding "
                    "{name}.metadata.json, {name}.pt, {name}.vocab.json; default: $INFERNETES_MODEL_REPOSITORY)")
    pl.add_argument("--replace", action="store_true", help="download again even if the model is in the store")
    _data_dir_arg(pl)
    pl.set_defaults(func=cmd_models_pull)
    ens = msub.add_parser("ensure", help="pull a model unless it is in the store (worker pods' init container)")
    ens.add_argument("model_id", help="the model the worker serves")
    ens.add_argument("--repo", help="hub repository to download (default: the built-in model's)")
    ens.add_argument("--revision", help="branch, tag or commit (default: the built-in model's, else main)")
    ens.add_argument("--task", choices=["text_embedding", "sparse_embedding", "rerank"],
                     help="check the repository serves this task (detected otherwise)")
    ens.add_argument("--hub", help="hub URL (default: $INFERNETES_MODEL_HUB, $HF_ENDPOINT, else huggingface.co)")
    ens.add_argument("--repository", help="a repository in Elastic's layout (https://, http:// or file://): Elastic's "
                     "for built-in models (default: $INFERNETES_MODEL_REPOSITORY), or the gateway's uploads route for "
                     "models uploaded with Eland ($INFERNETES_REPOSITORY_TOKEN: its bearer token)")
    ens.add_argument("--verify", action="store_true", help="check the checksums of a model already in the store")
    ens.add_argument("--seed-dir", help="a data directory baked into the image; models found there are copied")
    _data_dir_arg(ens)
    ens.set_defaults(func=cmd_models_ensure)
    opt = msub.add_parser("optimize", help="make an ONNX Runtime variant of a model (optionally int8), kept only if "
                          "it passes its check against the original")
    opt.add_argument("source_id", help="a text_embedding, sparse_embedding (SPLADE) or rerank model in the store")
    opt.add_argument("--model-id", required=True, help="the id of the variant (endpoints choose it as model_id)")
    opt.add_argument("--quantize", choices=["int8"], help="int8 weights (kept only if the check passes: cosine >= "
                     "0.99; sparse: top-k tokens and weights; rerank: scores within 0.02)")
    opt.add_argument("--replace", action="store_true", help="replace a model with the same id as the variant")
    _data_dir_arg(opt)
    opt.set_defaults(func=cmd_models_optimize)
    lst = msub.add_parser("list", help="list the models in the store")
    _data_dir_arg(lst)
    lst.set_defaults(func=cmd_models_list)
    rm = msub.add_parser("remove", help="remove a model from the store")
    rm.add_argument("model_id", help="the model to remove (see: infernetes models list)")
    _data_dir_arg(rm)
    rm.set_defaults(func=cmd_models_remove)
    _describe_subcommands(parser)
    return parser


def _describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """`infernetes X --help` opens with the line `infernetes --help` shows for X."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                if child.description is None and helps.get(name):
                    child.description = helps[name][0].upper() + helps[name][1:] + "."
                _describe_subcommands(child)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        from ..worker.server import main as worker_main

        worker_main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
