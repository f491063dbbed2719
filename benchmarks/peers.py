"""The end-to-end workload written in other autodiff libraries, for benchmarks/e2e.py.

Each peer is written here, from scratch, the way a user of that library would write
it, and computes the same numbers as tinymeta (checked in float64 by
tests/test_bench_peers.py and by the suite itself):

- ``torch_eager``: PyTorch eager, a Python loop over tasks, ``torch.autograd.grad`` with
  ``create_graph=True`` for the second-order terms.
- ``torch_func``: PyTorch ``torch.func`` (``grad``, ``vmap``, ``jvp``), vmapped over tasks.
- ``jax``: JAX ``jit`` of ``grad`` / ``vmap`` / ``jvp``, vmapped over tasks.
- ``autograd``: HIPS autograd, a Python loop over tasks (nested ``grad``).

The workload (see e2e.py): the MLP 1-40-40-1 with ReLU, params
``[W1 (1,40), b1 (40,), W2 (40,40), b2 (40,), W3 (40,1), b3 (1,)]``; per task the MSE as
the mean over its K points; the inner step θ ← θ − α ∇L_S(θ); the meta-loss the mean
over tasks of L_Q(θ_T). iMAML: T proximal steps φ ← φ − α(∇L_S(φ) + λ(φ − θ_0)) from θ_0,
then per task (I + H_S(φ)/λ) x = ∇L_Q(φ)/B by plain CG from x = 0, meta-gradient Σ_e x_e.

Every peer is imported lazily (:func:`load`): a missing library gives
:class:`Unavailable` with the reason, and the suite skips that peer.

The interface: ``peer.maml(params, batch, lr, T, order)``, ``peer.hvp(theta, v, batch)`` and
``peer.imaml(params, batch, lr, T, lam, cg_steps)`` take NumPy inputs (``params`` a list of
arrays, ``batch`` with support_x, support_y, query_x, query_y of shape (B, K, 1);
``theta`` and ``v`` lists of task-batched (B, …) arrays), convert them once, and return a
zero-argument function that computes the meta-gradient (or H·v) on the converted inputs,
so that conversion is not timed. ``peer.numpy(out)`` turns its result into a list of
NumPy arrays; ``peer.block(out)`` waits for asynchronous results (JAX).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

PEERS = ("torch_eager", "torch_func", "jax", "autograd")

LABELS = {
    "torch_eager": "PyTorch eager, loop",
    "torch_func": "PyTorch torch.func+vmap",
    "jax": "JAX jit+vmap",
    "autograd": "HIPS autograd, loop",
}


class Unavailable(Exception):
    """The peer's library cannot be imported (the message says why)."""


def load(name: str) -> Any:
    """The peer object for ``name`` (one of :data:`PEERS`), or raise :class:`Unavailable`."""
    makers = {"torch_eager": TorchEager, "torch_func": TorchFunc, "jax": Jax,
              "autograd": Autograd}
    if name not in makers:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    return makers[name]()


# --------------------------------------------------------------------------- helpers
def _task_cg(matvec: Callable, b: list, steps: int, dot: Callable) -> list:
    """Plain CG on one task's system A x = b from x = 0 (b, x lists of arrays)."""
    x = [bi * 0 for bi in b]
    r = list(b)
    p = list(r)
    rr = dot(r, r)
    for _ in range(steps):
        Ap = matvec(p)
        alpha = rr / dot(p, Ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * ai for ri, ai in zip(r, Ap)]
        rr_new = dot(r, r)
        beta = rr_new / rr
        p = [ri + beta * pi for ri, pi in zip(r, p)]
        rr = rr_new
    return x


def _batched_cg(matvec: Callable, b: tuple, steps: int) -> tuple:
    """Plain CG on B block-diagonal systems at once, each task its own α_e and β_e.

    Works on torch tensors and JAX arrays alike (leaves of shape (B, …)).
    """
    B = b[0].shape[0]

    def tdot(u: tuple, w: tuple) -> Any:
        total = 0
        for ui, wi in zip(u, w):
            total = total + (ui * wi).reshape(B, -1).sum(1)
        return total

    def axpy(s: Any, u: tuple, w: tuple) -> tuple:
        return tuple(wi + s.reshape((-1,) + (1,) * (ui.ndim - 1)) * ui for ui, wi in zip(u, w))

    x = tuple(bi * 0 for bi in b)
    r = b
    p = r
    rr = tdot(r, r)
    for _ in range(steps):
        Ap = matvec(p)
        alpha = rr / tdot(p, Ap)
        x = axpy(alpha, p, x)
        r = axpy(-alpha, Ap, r)
        rr_new = tdot(r, r)
        p = axpy(rr_new / rr, p, r)
        rr = rr_new
    return x


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _arrays(batch: Any) -> tuple:
    return batch.support_x, batch.support_y, batch.query_x, batch.query_y


# --------------------------------------------------------------------------- PyTorch
def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e}); pip install 'torch==2.13.0'") from e
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started: keep what is there
        pass
    return torch


def _torch_mlp(torch: Any, p: Any, x: Any) -> Any:
    W1, b1, W2, b2, W3, b3 = p
    h = torch.relu(x @ W1 + b1)
    h = torch.relu(h @ W2 + b2)
    return h @ W3 + b3


def _torch_loss(torch: Any, p: Any, x: Any, y: Any) -> Any:
    d = _torch_mlp(torch, p, x) - y
    return (d * d).mean()


class _TorchBase:
    def __init__(self) -> None:
        self.torch = _import_torch()
        self.version = f"torch {self.torch.__version__} (threads {self.torch.get_num_threads()}, "\
                       f"interop {self.torch.get_num_interop_threads()})"

    def _t(self, a: np.ndarray, requires_grad: bool = False) -> Any:
        t = self.torch.from_numpy(np.ascontiguousarray(a))
        return t.requires_grad_(True) if requires_grad else t

    def numpy(self, out: Any) -> list:
        return [o.detach().cpu().numpy() for o in out]

    def block(self, out: Any) -> Any:
        return out


class TorchEager(_TorchBase):
    """PyTorch eager mode: a Python loop over the tasks, autograd.grad per task."""

    name = "torch_eager"

    def maml(self, params: list, batch: Any, lr: float, T: int, order: int = 2) -> Callable:
        torch = self.torch
        grad = torch.autograd.grad
        theta0 = [self._t(p, requires_grad=True) for p in params]
        tasks = list(zip(*(self._t(a).unbind(0) for a in _arrays(batch))))
        B = len(tasks)
        second = order == 2

        def meta_gradient() -> tuple:
            total = 0.0
            for sx, sy, qx, qy in tasks:
                th = theta0
                for _ in range(T):
                    g = grad(_torch_loss(torch, th, sx, sy), th, create_graph=second)
                    th = [p - lr * gi for p, gi in zip(th, g)]
                total = total + _torch_loss(torch, th, qx, qy)
            return grad(total / B, theta0)

        return meta_gradient

    def hvp(self, theta: list, v: list, batch: Any) -> Callable:
        torch = self.torch
        grad = torch.autograd.grad
        thetas = [self._t(p) for p in theta]
        vs = list(zip(*(self._t(a).unbind(0) for a in v)))
        sx, sy = (self._t(a).unbind(0) for a in _arrays(batch)[:2])
        tasks = list(zip(sx, sy, vs))

        def hvps() -> list:
            out = []
            for e, (x, y, ve) in enumerate(tasks):
                th = [p[e].detach().requires_grad_(True) for p in thetas]
                g = grad(_torch_loss(torch, th, x, y), th, create_graph=True)
                out.append(grad(g, th, grad_outputs=ve))
            return [torch.stack(leaf) for leaf in zip(*out)]

        return hvps

    def imaml(self, params: list, batch: Any, lr: float, T: int, lam: float,
              cg_steps: int) -> Callable:
        torch = self.torch
        grad = torch.autograd.grad
        theta0 = [self._t(p) for p in params]
        tasks = list(zip(*(self._t(a).unbind(0) for a in _arrays(batch))))
        B = len(tasks)

        def dot(a: list, b: list) -> Any:
            return sum((ai * bi).sum() for ai, bi in zip(a, b))

        def meta_gradient() -> list:
            total = [torch.zeros_like(p) for p in theta0]
            for sx, sy, qx, qy in tasks:
                phi = [p.detach().requires_grad_(True) for p in theta0]
                for _ in range(T):
                    g = grad(_torch_loss(torch, phi, sx, sy), phi)
                    phi = [(p - lr * gi - lr * lam * (p - p0)).detach().requires_grad_(True)
                           for p, gi, p0 in zip(phi, g, theta0)]
                b = [gi / B for gi in grad(_torch_loss(torch, phi, qx, qy), phi)]
                gs = grad(_torch_loss(torch, phi, sx, sy), phi, create_graph=True)

                def matvec(u: list, gs: Any = gs, phi: list = phi) -> list:
                    hu = grad(gs, phi, grad_outputs=u, retain_graph=True)
                    return [ui + hi / lam for ui, hi in zip(u, hu)]

                x = _task_cg(matvec, b, cg_steps, dot)
                total = [t + xi.detach() for t, xi in zip(total, x)]
            return total

        return meta_gradient


class TorchFunc(_TorchBase):
    """PyTorch torch.func: grad / jvp composed with vmap over the task axis."""

    name = "torch_func"

    def __init__(self) -> None:
        super().__init__()
        try:
            from torch import func
        except ImportError as e:
            raise Unavailable(f"torch.func is missing from this torch ({e})") from e
        self.func = func

    def _loss(self) -> Callable:
        torch = self.torch
        return lambda p, x, y: _torch_loss(torch, p, x, y)

    def maml(self, params: list, batch: Any, lr: float, T: int, order: int = 2) -> Callable:
        grad, vmap = self.func.grad, self.func.vmap
        loss = self._loss()
        theta0 = tuple(self._t(p) for p in params)
        sx, sy, qx, qy = (self._t(a) for a in _arrays(batch))

        def adapt(p: tuple, x: Any, y: Any) -> tuple:
            for _ in range(T):
                g = grad(loss)(p, x, y)
                p = tuple(pi - lr * gi for pi, gi in zip(p, g))
            return p

        if order == 2:
            def task_query(p: tuple, x: Any, y: Any, xq: Any, yq: Any) -> Any:
                return loss(adapt(p, x, y), xq, yq)

            def meta_loss(p: tuple) -> Any:
                return vmap(task_query, in_dims=(None, 0, 0, 0, 0))(p, sx, sy, qx, qy).mean()

            meta_grad = grad(meta_loss)
            return lambda: meta_grad(theta0)

        batched_adapt = vmap(adapt, in_dims=(None, 0, 0))
        query_grads = vmap(grad(loss))
        B = sx.shape[0]

        def first_order() -> tuple:
            g = query_grads(batched_adapt(theta0, sx, sy), qx, qy)
            return tuple(gi.sum(0) / B for gi in g)

        return first_order

    def _batched_hvp(self) -> Callable:
        grad, vmap, jvp = self.func.grad, self.func.vmap, self.func.jvp
        loss = self._loss()

        def task_hvp(p: tuple, u: tuple, x: Any, y: Any) -> tuple:
            return jvp(lambda q: grad(loss)(q, x, y), (p,), (u,))[1]

        return vmap(task_hvp)

    def hvp(self, theta: list, v: list, batch: Any) -> Callable:
        th = tuple(self._t(p) for p in theta)
        vs = tuple(self._t(p) for p in v)
        sx, sy = (self._t(a) for a in _arrays(batch)[:2])
        batched_hvp = self._batched_hvp()
        return lambda: batched_hvp(th, vs, sx, sy)

    def imaml(self, params: list, batch: Any, lr: float, T: int, lam: float,
              cg_steps: int) -> Callable:
        grad, vmap = self.func.grad, self.func.vmap
        loss = self._loss()
        theta0 = tuple(self._t(p) for p in params)
        sx, sy, qx, qy = (self._t(a) for a in _arrays(batch))
        B = sx.shape[0]
        batched_hvp = self._batched_hvp()

        def prox(p0: tuple, x: Any, y: Any) -> tuple:
            phi = p0
            for _ in range(T):
                g = grad(loss)(phi, x, y)
                phi = tuple(p - lr * gi - lr * lam * (p - q) for p, gi, q in zip(phi, g, p0))
            return phi

        batched_prox = vmap(prox, in_dims=(None, 0, 0))
        query_grads = vmap(grad(loss))

        def meta_gradient() -> tuple:
            phi = batched_prox(theta0, sx, sy)
            b = tuple(g / B for g in query_grads(phi, qx, qy))

            def matvec(u: tuple) -> tuple:
                hu = batched_hvp(phi, u, sx, sy)
                return tuple(ui + hi / lam for ui, hi in zip(u, hu))

            x = _batched_cg(matvec, b, cg_steps)
            return tuple(xi.sum(0) for xi in x)

        return meta_gradient


# --------------------------------------------------------------------------- JAX
class Jax:
    """JAX: the whole meta-gradient under ``jax.jit``, vmapped over tasks.

    Inputs are passed to the jitted function as arguments (never closed over), so XLA
    cannot fold the data into constants. Compilation happens on the first call, which
    the suite times apart as compile time.
    """

    name = "jax"

    def __init__(self) -> None:
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as e:
            raise Unavailable(f"jax is not installed ({e}); pip install jax") from e
        jax.config.update("jax_enable_x64", True)  # float64 for the checks; float32 stays
        self.jax, self.jnp = jax, jnp
        self.version = (f"jax {jax.__version__}, jaxlib {_dist_version('jaxlib')} "
                        f"({jax.devices()[0].platform}; XLA_FLAGS="
                        f"{os.environ.get('XLA_FLAGS', '')!r})")

    def _loss(self) -> Callable:
        jnp = self.jnp

        def loss(p: tuple, x: Any, y: Any) -> Any:
            W1, b1, W2, b2, W3, b3 = p
            h = jnp.maximum(x @ W1 + b1, 0)
            h = jnp.maximum(h @ W2 + b2, 0)
            d = h @ W3 + b3 - y
            return jnp.mean(d * d)

        return loss

    def _a(self, a: np.ndarray) -> Any:
        return self.jax.device_put(self.jnp.asarray(a))

    def numpy(self, out: Any) -> list:
        return [np.asarray(o) for o in out]

    def block(self, out: Any) -> Any:
        return self.jax.block_until_ready(out)

    def maml(self, params: list, batch: Any, lr: float, T: int, order: int = 2) -> Callable:
        jax = self.jax
        loss = self._loss()
        theta0 = tuple(self._a(p) for p in params)
        data = tuple(self._a(a) for a in _arrays(batch))

        def adapt(p: tuple, x: Any, y: Any) -> tuple:
            for _ in range(T):
                g = jax.grad(loss)(p, x, y)
                p = tuple(pi - lr * gi for pi, gi in zip(p, g))
            return p

        def meta_loss(p: tuple, sx: Any, sy: Any, qx: Any, qy: Any) -> Any:
            task = lambda x, y, xq, yq: loss(adapt(p, x, y), xq, yq)  # noqa: E731
            return jax.vmap(task)(sx, sy, qx, qy).mean()

        if order == 1:
            def first_order(p: tuple, sx: Any, sy: Any, qx: Any, qy: Any) -> tuple:
                th = jax.vmap(adapt, in_axes=(None, 0, 0))(p, sx, sy)
                g = jax.vmap(jax.grad(loss))(th, qx, qy)
                return tuple(gi.mean(0) for gi in g)

            fn = jax.jit(first_order)
        else:
            fn = jax.jit(jax.grad(meta_loss))
        return lambda: fn(theta0, *data)

    def _batched_hvp(self) -> Callable:
        jax = self.jax
        loss = self._loss()

        def task_hvp(p: tuple, u: tuple, x: Any, y: Any) -> tuple:
            return jax.jvp(lambda q: jax.grad(loss)(q, x, y), (p,), (u,))[1]

        return jax.vmap(task_hvp)

    def hvp(self, theta: list, v: list, batch: Any) -> Callable:
        th = tuple(self._a(p) for p in theta)
        vs = tuple(self._a(p) for p in v)
        sx, sy = (self._a(a) for a in _arrays(batch)[:2])
        fn = self.jax.jit(self._batched_hvp())
        return lambda: fn(th, vs, sx, sy)

    def imaml(self, params: list, batch: Any, lr: float, T: int, lam: float,
              cg_steps: int) -> Callable:
        jax = self.jax
        loss = self._loss()
        theta0 = tuple(self._a(p) for p in params)
        data = tuple(self._a(a) for a in _arrays(batch))
        batched_hvp = self._batched_hvp()

        def prox(p0: tuple, x: Any, y: Any) -> tuple:
            phi = p0
            for _ in range(T):
                g = jax.grad(loss)(phi, x, y)
                phi = tuple(p - lr * gi - lr * lam * (p - q) for p, gi, q in zip(phi, g, p0))
            return phi

        def meta_gradient(p0: tuple, sx: Any, sy: Any, qx: Any, qy: Any) -> tuple:
            B = sx.shape[0]
            phi = jax.vmap(prox, in_axes=(None, 0, 0))(p0, sx, sy)
            b = tuple(g / B for g in jax.vmap(jax.grad(loss))(phi, qx, qy))

            def matvec(u: tuple) -> tuple:
                hu = batched_hvp(phi, u, sx, sy)
                return tuple(ui + hi / lam for ui, hi in zip(u, hu))

            x = _batched_cg(matvec, b, cg_steps)
            return tuple(xi.sum(0) for xi in x)

        fn = jax.jit(meta_gradient)
        return lambda: fn(theta0, *data)


# --------------------------------------------------------------------------- autograd
class Autograd:
    """HIPS autograd: a Python loop over tasks, ``grad`` nested for second order."""

    name = "autograd"

    def __init__(self) -> None:
        try:
            import autograd
            import autograd.numpy as anp
        except ImportError as e:
            raise Unavailable(f"autograd is not installed ({e}); pip install autograd") from e
        self.grad, self.anp = autograd.grad, anp
        self.version = f"autograd {_dist_version('autograd')}"

    def _loss(self) -> Callable:
        anp = self.anp

        def loss(p: list, x: Any, y: Any) -> Any:
            W1, b1, W2, b2, W3, b3 = p
            h = anp.maximum(anp.dot(x, W1) + b1, 0.0)
            h = anp.maximum(anp.dot(h, W2) + b2, 0.0)
            d = anp.dot(h, W3) + b3 - y
            return anp.mean(d * d)

        return loss

    def numpy(self, out: Any) -> list:
        return [np.asarray(o) for o in out]

    def block(self, out: Any) -> Any:
        return out

    def maml(self, params: list, batch: Any, lr: float, T: int, order: int = 2) -> Callable:
        grad, loss = self.grad, self._loss()
        theta0 = [np.asarray(p) for p in params]
        tasks = list(zip(*_arrays(batch)))
        B = len(tasks)

        if order == 2:
            def meta_loss(p: list) -> Any:
                total = 0.0
                for sx, sy, qx, qy in tasks:
                    th = p
                    for _ in range(T):
                        g = grad(loss)(th, sx, sy)
                        th = [a - lr * gi for a, gi in zip(th, g)]
                    total = total + loss(th, qx, qy)
                return total / B

            meta_grad = grad(meta_loss)
            return lambda: meta_grad(theta0)

        def first_order() -> list:
            total = [np.zeros_like(p) for p in theta0]
            for sx, sy, qx, qy in tasks:
                th = theta0
                for _ in range(T):
                    th = [a - lr * gi for a, gi in zip(th, grad(loss)(th, sx, sy))]
                total = [t + gi / B for t, gi in zip(total, grad(loss)(th, qx, qy))]
            return total

        return first_order

    def _task_hvp(self) -> Callable:
        grad, loss, anp = self.grad, self._loss(), self.anp

        def task_hvp(p: list, u: list, x: Any, y: Any) -> list:
            def grad_dot_u(q: list) -> Any:
                return sum(anp.sum(gi * ui) for gi, ui in zip(grad(loss)(q, x, y), u))

            return grad(grad_dot_u)(p)

        return task_hvp

    def hvp(self, theta: list, v: list, batch: Any) -> Callable:
        task_hvp = self._task_hvp()
        thetas = list(zip(*theta))
        vs = list(zip(*v))
        sx, sy = _arrays(batch)[:2]

        def hvps() -> list:
            out = [task_hvp(list(p), list(u), x, y) for p, u, x, y in zip(thetas, vs, sx, sy)]
            return [np.stack(leaf) for leaf in zip(*out)]

        return hvps

    def imaml(self, params: list, batch: Any, lr: float, T: int, lam: float,
              cg_steps: int) -> Callable:
        grad, loss = self.grad, self._loss()
        task_hvp = self._task_hvp()
        theta0 = [np.asarray(p) for p in params]
        tasks = list(zip(*_arrays(batch)))
        B = len(tasks)

        def dot(a: list, b: list) -> Any:
            return sum(np.vdot(ai, bi) for ai, bi in zip(a, b))

        def meta_gradient() -> list:
            total = [np.zeros_like(p) for p in theta0]
            for sx, sy, qx, qy in tasks:
                phi = theta0
                for _ in range(T):
                    g = grad(loss)(phi, sx, sy)
                    phi = [p - lr * gi - lr * lam * (p - p0) for p, gi, p0 in zip(phi, g, theta0)]
                b = [gi / B for gi in grad(loss)(phi, qx, qy)]

                def matvec(u: list, phi: list = phi, sx: Any = sx, sy: Any = sy) -> list:
                    return [ui + hi / lam for ui, hi in zip(u, task_hvp(phi, u, sx, sy))]

                x = _task_cg(matvec, b, cg_steps, dot)
                total = [t + xi for t, xi in zip(total, x)]
            return total

        return meta_gradient
