"""Where the arguments of a vote program lie on a device mesh.

A vote program takes (params, x, row_ids, aux): the classifier's parameters,
a batch of inputs, their identities and the noise arguments (offsets or a
PRNG key). Over a mesh, the batch and its identities are split along the
mesh's axes when the batch divides evenly (otherwise replicated: the program
splits the work itself, `votes.py`), everything else is replicated.

That layout is written once (`shardings`) and used twice: `place` puts
concrete arguments there to run the program, `abstract` describes arguments
there, as `jax.ShapeDtypeStruct`s carrying those shardings, to lower it. So
a program lowered from abstract arguments is the one a call with concrete
arguments compiles (JAX's cache then serves the call), and lowering needs
no array on any device: the mesh may be made of compile-only devices.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from dssn_jax.core.inputs import has_values


def make_mesh(devices=None) -> Mesh:
  """A one-axis ("data") mesh over the given devices (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), ("data",))


def mesh_size(mesh: Mesh | None) -> int:
  """Devices of the mesh (1 without one)."""
  return 1 if mesh is None else mesh.size


def first_device(mesh: Mesh | None):
  """The device whose kind and memory size the chunks: the mesh's first
  device of this process, else its first (None: the default device)."""
  if mesh is None:
    return None
  devices = list(mesh.devices.flat)
  here = jax.process_index()
  return next((d for d in devices if d.process_index == here), devices[0])


def shardings(mesh: Mesh, args):
  """The sharding of every leaf of a vote program's (params, x, row_ids,
  aux) over the mesh, as a pytree of their structure."""
  params, x, _, aux = args
  replicated = NamedSharding(mesh, P())
  split = P(tuple(mesh.axis_names)) if x.shape[0] % mesh.size == 0 else P()
  batch = NamedSharding(mesh, split)
  return (
      jax.tree.map(lambda _: replicated, params),
      batch,
      batch,
      jax.tree.map(lambda _: replicated, aux),
  )


def place(mesh: Mesh | None, args):
  """The arguments where the program runs on them: concrete arrays put on
  the mesh with `shardings` (numpy arrays on the default device without a
  mesh); tracers of the caller's jit or vmap left to the caller's program."""

  def put(a, sharding):
    if not has_values(a):
      return a
    if sharding is None:  # device_put, unlike jnp.asarray, compiles nothing.
      return jax.device_put(a) if isinstance(a, np.ndarray) else a
    return jax.device_put(a, sharding)

  return _map_with_shardings(put, mesh, args)


def abstract(mesh: Mesh | None, args):
  """`jax.ShapeDtypeStruct`s of the arguments (concrete, traced or already
  abstract) with the shardings the program runs with. Reads only shapes and
  dtypes: nothing is computed or put on a device.

  Raises:
    ValueError: for an abstract argument whose sharding is not the one the
      program runs with (a program compiled for it would not serve a call).
  """

  def describe(a, sharding):
    if isinstance(a, jax.ShapeDtypeStruct):
      given = a.sharding
      if not (
          given is None
          or given == sharding
          or (
              sharding is not None
              and given.is_equivalent_to(sharding, len(a.shape))
          )
      ):
        raise ValueError(
            f"an abstract argument of shape {a.shape} has sharding {given}, "
            f"but the vote program runs it with {sharding} (batch split "
            f"over the mesh when it divides, else replicated)."
        )
      return jax.ShapeDtypeStruct(
          a.shape, a.dtype, sharding=sharding, weak_type=a.weak_type
      )
    aval = jax.typeof(a)  # Canonical dtype and weak type, as jit sees a.
    return jax.ShapeDtypeStruct(
        aval.shape, aval.dtype, sharding=sharding, weak_type=aval.weak_type
    )

  return _map_with_shardings(describe, mesh, args)


def _map_with_shardings(fn, mesh: Mesh | None, args):
  """fn(leaf, its sharding) over the arguments' leaves; the sharding is None
  without a mesh (the default device, arguments not committed to it)."""
  if mesh is None:
    return jax.tree.map(lambda a: fn(a, None), args)
  return jax.tree.map(fn, args, shardings(mesh, args))
