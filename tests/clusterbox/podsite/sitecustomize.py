"""The cluster box's stand-in for a pod's network and mount namespaces, loaded into every Python
process a box pod runs (the kubelet puts this folder first on the container's PYTHONPATH).

The box runs pods as plain processes on one machine, so there are no real namespaces. This module
makes a pod's Python code see what it would see in a container:

- network: a listening socket bound to the wildcard ("", 0.0.0.0) or to loopback (127.0.0.1,
  localhost) is bound to the pod's own address (CLUSTERBOX_POD_IP, 127.0.0.N) instead, so two pods
  can both listen on :8080; a connection to 127.0.0.1 / localhost reaches the pod itself, except
  the API server's own address (CLUSTERBOX_API, the `kubernetes` Service). IPv6 wildcard and
  loopback binds fail with EADDRNOTAVAIL (an IPv4-only pod; asyncio then skips that family).
  uvloop's create_server/create_connection (which bind in C) are rewritten the same way.
- mounts: a path under a volume's mountPath (CLUSTERBOX_MOUNTS) is redirected to the pod's folder
  for that volume, for Python's file APIs: open(), io.open, the os functions that take paths
  (so os.path, pathlib, shutil and tempfile follow), ssl's certificate loading and sqlite3.

What it cannot do: native code that opens paths or sockets itself (a Rust tokenizer reading a
file, a C library binding a port) sees the machine's real filesystem and network, and non-Python
programs get no stand-in at all.
"""

from __future__ import annotations

import errno
import json
import os
import sys


def _install(pod_ip: str) -> None:
    import builtins
    import io
    import socket

    api = os.environ.get("CLUSTERBOX_API", "")
    api_host, _, api_port = api.rpartition(":")
    loopback = {"127.0.0.1", "localhost", "0.0.0.0", ""}

    def own_host(host: object, port: object) -> bool:
        return isinstance(host, str) and host in loopback and not (host in ("127.0.0.1", "localhost") and str(port) == api_port
                                                                    and api_host in ("127.0.0.1", "localhost"))

    real_bind, real_connect, real_connect_ex = socket.socket.bind, socket.socket.connect, socket.socket.connect_ex

    def bind(self: socket.socket, address: object) -> None:
        if self.family == socket.AF_INET and isinstance(address, tuple) and address[0] in loopback:
            address = (pod_ip, *address[1:])
        elif self.family == socket.AF_INET6 and isinstance(address, tuple) and address[0] in ("", "::", "::1", "localhost"):
            raise OSError(errno.EADDRNOTAVAIL, "the box's pods have IPv4 addresses only")
        return real_bind(self, address)

    def target(self: socket.socket, address: object) -> object:
        if self.family == socket.AF_INET and isinstance(address, tuple) and own_host(address[0], address[1]) and address[0]:
            return (pod_ip, *address[1:])
        return address

    socket.socket.bind = bind  # type: ignore[method-assign]
    socket.socket.connect = lambda self, address: real_connect(self, target(self, address))  # type: ignore[method-assign]
    socket.socket.connect_ex = lambda self, address: real_connect_ex(self, target(self, address))  # type: ignore[method-assign]

    def host_of(host: object, port: object, listening: bool) -> object:
        if isinstance(host, (list, tuple)):
            return [host_of(h, port, listening) for h in host]
        if listening and (host is None or host in ("::", "::1")):
            return pod_ip
        if listening and isinstance(host, str) and host in loopback:
            return pod_ip
        return pod_ip if (not listening and host and own_host(host, port)) else host

    def patch_uvloop(module: object) -> None:
        loop = getattr(module, "Loop", None)
        if loop is None or getattr(loop, "_clusterbox", False):
            return
        create_server, create_connection = loop.create_server, loop.create_connection

        async def server(self, protocol_factory, host=None, port=None, *args, **kw):  # type: ignore[no-untyped-def]
            if kw.get("sock") is None:
                host = host_of(host, port, True)
            return await create_server(self, protocol_factory, host, port, *args, **kw)

        async def connection(self, protocol_factory, host=None, port=None, *args, **kw):  # type: ignore[no-untyped-def]
            return await create_connection(self, protocol_factory, host_of(host, port, False), port, *args, **kw)

        loop.create_server, loop.create_connection, loop._clusterbox = server, connection, True

    after_import("uvloop", patch_uvloop)


def _install_mounts(mounts: list[tuple[str, str]], root: str) -> None:
    import builtins
    import io

    def real(path: object) -> object:
        if isinstance(path, int):
            return path
        try:
            raw = os.fspath(path)  # type: ignore[arg-type]
        except TypeError:
            return path
        as_bytes = isinstance(raw, bytes)
        text = os.fsdecode(raw)
        if not text.startswith("/"):
            return path
        norm = os.path.normpath(text)
        if norm == root or norm.startswith(root + "/"):
            return path
        for mount, folder in mounts:
            if norm == mount or norm.startswith(mount + "/"):
                out = folder + norm[len(mount):]
                return os.fsencode(out) if as_bytes else out
        return path

    def wrap(fn, positions=(0,)):  # type: ignore[no-untyped-def]
        def redirected(*args, **kw):  # type: ignore[no-untyped-def]
            args = list(args)
            for i in positions:
                if i < len(args):
                    args[i] = real(args[i])
            for key in ("path", "file", "src", "dst", "cafile", "capath", "certfile", "keyfile", "database"):
                if key in kw:
                    kw[key] = real(kw[key])
            return fn(*args, **kw)
        redirected.__wrapped__ = fn  # type: ignore[attr-defined]
        redirected.__name__ = getattr(fn, "__name__", "redirected")
        return redirected

    builtins.open = io.open = wrap(io.open)  # type: ignore[assignment]
    for name in ("open", "stat", "lstat", "listdir", "scandir", "mkdir", "rmdir", "remove", "unlink", "chmod", "chown",
                 "lchown", "access", "utime", "readlink", "truncate", "statvfs", "chdir", "mkfifo", "pathconf",
                 "getxattr", "setxattr", "listxattr", "removexattr"):
        fn = getattr(os, name, None)
        if fn is not None:
            setattr(os, name, wrap(fn))
    for name in ("rename", "replace", "link", "symlink"):
        setattr(os, name, wrap(getattr(os, name), (0, 1)))

    def patch_ssl(ssl: object) -> None:
        ctx = ssl.SSLContext  # type: ignore[attr-defined]
        ctx.load_verify_locations = wrap(ctx.load_verify_locations, (1, 2))
        ctx.load_cert_chain = wrap(ctx.load_cert_chain, (1, 2))

    def patch_sqlite(sqlite3: object) -> None:
        sqlite3.connect = wrap(sqlite3.connect)  # type: ignore[attr-defined]

    after_import("ssl", patch_ssl)
    after_import("sqlite3", patch_sqlite)


_hooks: dict[str, list] = {}


def after_import(name: str, hook) -> None:  # type: ignore[no-untyped-def]
    """Run hook(module) once the module is imported (now, if it already is)."""
    if name in sys.modules:
        hook(sys.modules[name])
        return
    _hooks.setdefault(name, []).append(hook)
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


class _Finder:
    """A meta path finder that finds nothing itself: it wraps the real loader of a hooked module."""

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name not in _hooks:
            return None
        import importlib.util
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        loader, hooks = spec.loader, _hooks.pop(name)
        real_exec = loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            real_exec(module)
            for hook in hooks:
                hook(module)
        loader.exec_module = exec_module
        return spec


def _main() -> None:
    pod_ip = os.environ.get("CLUSTERBOX_POD_IP")
    if pod_ip:
        _install(pod_ip)
    mounts = os.environ.get("CLUSTERBOX_MOUNTS")
    if mounts:
        pairs = sorted(((m.rstrip("/") or "/", f) for m, f in json.loads(mounts)), key=lambda p: -len(p[0]))
        _install_mounts(pairs, os.environ.get("CLUSTERBOX_KUBELET_ROOT", "/nonexistent"))


_main()
