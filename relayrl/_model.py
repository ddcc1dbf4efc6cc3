"""Model modules: metadata, the on-disk directory format, the bytes bundle and validation."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ._errors import ConfigError, IntegrityError, ModelError, RelayRLError
from ._spaces import Box, Discrete, MultiDiscrete, Space, space_from_dict

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "POLICY_HEADS",
    "ModelMetadata",
    "ModelModule",
    "TensorSpec",
]

#: Version of the ``relayrl-model.json`` schema written by this release.
FORMAT_VERSION = 1
#: File name of the metadata inside a model directory.
METADATA_FILE = "relayrl-model.json"
#: Metadata file name of RelayRL (the Rust framework) model directories, which load too.
RELAYRL_METADATA_FILE = "metadata.json"
#: Policy heads the framework samples from.
POLICY_HEADS = ("categorical", "multi_categorical", "gaussian")

_BUNDLE_MAGIC = b"RLRLMOD1"
_BUNDLE_HEADER = struct.Struct("<8sI")
_DIGEST_SIZE = 32

# RelayRL's DType names -> numpy dtype names.
_RELAYRL_DTYPES = {"F16": "float16", "BF16": "float32", "F32": "float32", "F64": "float64",
                   "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}
_RELAYRL_BACKENDS = {".pt": "torch", ".pth": "torch", ".ts": "torch", ".onnx": "onnx"}


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _dtype_name(value: Any) -> str:
    try:
        return str(np.dtype(value).name)
    except TypeError as exc:
        raise ModelError(f"unknown dtype {value!r}") from exc


@attrs.frozen(kw_only=True)
class TensorSpec:
    """Shape (without the batch axis) and dtype of a model input or output.

    .. versionadded:: 0.1
    """

    shape: tuple[int, ...] = attrs.field(converter=_shape)
    dtype: str = attrs.field(default="float32", converter=_dtype_name)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(shape=data["shape"], dtype=data.get("dtype", "float32"))


def _head_output_dim(head: str, space: Space) -> int:
    if head == "categorical":
        if not isinstance(space, Discrete):
            raise ModelError(f"policy head 'categorical' needs a Discrete action space, got {space!r}")
        return space.n
    if head == "multi_categorical":
        if not isinstance(space, MultiDiscrete):
            raise ModelError(f"policy head 'multi_categorical' needs a MultiDiscrete action space, got {space!r}")
        return space.flat_dim
    if head == "gaussian":
        if not isinstance(space, Box) or len(space.shape) != 1:
            raise ModelError(f"policy head 'gaussian' needs a 1-D Box action space, got {space!r}")
        return space.shape[0]
    raise ModelError(f"unknown policy head {head!r}; expected one of {', '.join(POLICY_HEADS)}")


def default_head(space: Space) -> str:
    """The policy head that fits an action space."""
    if isinstance(space, Discrete):
        return "categorical"
    if isinstance(space, MultiDiscrete):
        return "multi_categorical"
    return "gaussian"


@attrs.frozen(kw_only=True)
class ModelMetadata:
    """Everything relayrl knows about a model besides its weights (``relayrl-model.json``).

    .. versionadded:: 0.1
    """

    #: Schema version of the metadata.
    format_version: int = FORMAT_VERSION
    #: Name of the inference backend that runs the model file.
    backend: str
    #: File name of the model inside the model directory.
    model_file: str
    #: Observation spec (shape without batch axis, dtype).
    input: TensorSpec
    #: Head-parameter spec: logits ``(flat_dim,)`` or Gaussian mean ``(action_dim,)``.
    output: TensorSpec
    #: The action space the head samples from.
    action_space: Space
    #: ``"categorical"``, ``"multi_categorical"`` or ``"gaussian"``.
    policy_head: str
    #: Whether the model also outputs a state value.
    value_output: bool = False
    #: Version stamped by whoever produced the model (a training server), or None.
    version: int | None = None
    #: sha256 (hex) of the model file.
    checksum: str
    #: Free-form JSON-compatible information (hyperparameters, provenance, ...).
    extra: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.format_version > FORMAT_VERSION:
            raise ModelError(f"model format version {self.format_version} is newer than this relayrl "
                             f"understands ({FORMAT_VERSION}); upgrade relayrl")
        if not self.model_file or os.path.basename(self.model_file) != self.model_file:
            raise ModelError(f"model_file must be a plain file name, got {self.model_file!r}")
        expected = _head_output_dim(self.policy_head, self.action_space)
        if self.output.shape != (expected,):
            raise ModelError(f"output shape {self.output.shape} does not fit head {self.policy_head!r} "
                             f"over {self.action_space!r}: expected ({expected},)")
        if len(self.input.shape) > 8:
            raise ModelError(f"observation rank {len(self.input.shape)} is too large")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``relayrl-model.json`` holds)."""
        return {
            "format_version": self.format_version,
            "backend": self.backend,
            "model_file": self.model_file,
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "action_space": self.action_space.to_dict(),
            "policy_head": self.policy_head,
            "value_output": self.value_output,
            "version": self.version,
            "checksum": self.checksum,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Parse ``relayrl-model.json`` content.

        Raises:
            ModelError: a key is missing or has the wrong type; the message names it.
        """
        try:
            version = data.get("version")
            return cls(
                format_version=int(data.get("format_version", FORMAT_VERSION)),
                backend=str(data["backend"]),
                model_file=str(data["model_file"]),
                input=TensorSpec.from_dict(data["input"]),
                output=TensorSpec.from_dict(data["output"]),
                action_space=space_from_dict(data["action_space"]),
                policy_head=str(data["policy_head"]),
                value_output=bool(data.get("value_output", False)),
                version=None if version is None else int(version),
                checksum=str(data["checksum"]),
                extra=dict(data.get("extra") or {}),
            )
        except KeyError as exc:
            raise ModelError(f"model metadata is missing the key {exc.args[0]!r}") from exc
        except ConfigError as exc:
            raise ModelError(f"model metadata has a bad action_space: {exc}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, RelayRLError):
                raise
            raise ModelError(f"malformed model metadata: {exc}") from exc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelModule:
    """A policy model: metadata plus the bytes of one model file, run by a named backend.

    A module is an immutable value. Build one with :meth:`create` (or a helper such as
    :func:`relayrl.mlp_policy`), load it with :meth:`load` or :meth:`from_bytes`. Loading
    validates by default: the backend loads the model and runs a real forward on a dummy
    batch, checking shapes and that every output is finite. A model that cannot run is
    rejected with :class:`~relayrl.ModelError`; nothing ever falls back to zero actions.

    .. versionadded:: 0.1
    """

    __slots__ = ("__weakref__", "_data", "_lock", "_metadata", "_policies")

    def __init__(self, metadata: ModelMetadata, data: bytes) -> None:
        """Wrap metadata and file bytes without validating (prefer :meth:`create`)."""
        if _sha256(data) != metadata.checksum:
            raise IntegrityError(f"model file {metadata.model_file!r} does not match its sha256 checksum")
        self._metadata = metadata
        self._data = bytes(data)
        self._policies: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        backend: str,
        model_file: str,
        data: bytes,
        obs_shape: tuple[int, ...],
        action_space: Space,
        obs_dtype: str = "float32",
        policy_head: str | None = None,
        value_output: bool = False,
        version: int | None = None,
        extra: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> ModelModule:
        """Build a module from a model file's bytes and a description of what it computes.

        Raises:
            ModelError: the description is inconsistent, or (with ``validate``) the model
                does not run as described.
        """
        head = policy_head or default_head(action_space)
        metadata = ModelMetadata(
            backend=backend,
            model_file=model_file,
            input=TensorSpec(shape=obs_shape, dtype=obs_dtype),
            output=TensorSpec(shape=(_head_output_dim(head, action_space),), dtype="float32"),
            action_space=action_space,
            policy_head=head,
            value_output=value_output,
            version=version,
            checksum=_sha256(data),
            extra=dict(extra or {}),
        )
        module = cls(metadata, data)
        if validate:
            module.validate()
        return module

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, validate: bool = True, device: str = "cpu") -> ModelModule:
        """Load a model directory, the path of its metadata file, or a bundle file.

        RelayRL's own model directories (``metadata.json`` next to a ``.pt`` or ``.onnx``
        file) load too; their observation shape drops RelayRL's leading batch dimension and
        their output is taken as the logits of a ``Discrete`` action space.

        Raises:
            ModelError: nothing loadable at ``path``, malformed metadata, or failed validation.
            IntegrityError: the model file does not match its checksum.
            BackendUnavailableError: (with ``validate``) its backend is not installed.
        """
        p = Path(path)
        if p.is_dir():
            if (p / METADATA_FILE).is_file():
                meta_path = p / METADATA_FILE
            elif (p / RELAYRL_METADATA_FILE).is_file():
                meta_path = p / RELAYRL_METADATA_FILE
            else:
                raise ModelError(f"{p} holds neither {METADATA_FILE} nor RelayRL's {RELAYRL_METADATA_FILE}")
        elif p.is_file():
            with p.open("rb") as fh:
                head = fh.read(len(_BUNDLE_MAGIC))
            if head == _BUNDLE_MAGIC:
                return cls.from_bytes(p.read_bytes(), validate=validate, device=device)
            meta_path = p
        else:
            raise ModelError(f"no model module at {p}")

        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read model metadata {meta_path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelError(f"model metadata {meta_path} is not a JSON object")
        is_native = meta_path.name == METADATA_FILE or "format_version" in raw
        native = ModelMetadata.from_dict(raw) if is_native else None
        model_name = native.model_file if native is not None else os.path.basename(str(raw.get("model_file", "")))
        model_path = meta_path.parent / model_name
        if not model_name or not model_path.is_file():
            raise ModelError(f"model file {model_name!r} named by {meta_path} does not exist")
        data = model_path.read_bytes()
        metadata = native if native is not None else _from_relayrl_metadata(raw, data)
        module = cls(metadata, data)
        if validate:
            module.validate(device)
        return module

    @classmethod
    def from_bytes(cls, data: bytes, *, validate: bool = True, device: str = "cpu") -> ModelModule:
        """Rebuild a module from :meth:`to_bytes` output, verifying its integrity first.

        Raises:
            IntegrityError: the bundle is truncated, corrupted or tampered with.
            ModelError: it decodes but describes an invalid model (or fails validation).
        """
        view = memoryview(data)
        if len(view) < _BUNDLE_HEADER.size + _DIGEST_SIZE:
            raise IntegrityError(f"model bundle too short ({len(view)} bytes)")
        body, digest = view[:-_DIGEST_SIZE], bytes(view[-_DIGEST_SIZE:])
        if hashlib.sha256(body).digest() != digest:
            raise IntegrityError("model bundle checksum mismatch: the bundle is corrupted")
        magic, meta_len = _BUNDLE_HEADER.unpack_from(body)
        if magic != _BUNDLE_MAGIC:
            raise IntegrityError("not a relayrl model bundle (bad magic)")
        start = _BUNDLE_HEADER.size
        if start + meta_len > len(body):
            raise IntegrityError("model bundle metadata length exceeds the bundle")
        try:
            raw = json.loads(bytes(body[start:start + meta_len]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"model bundle metadata is not valid JSON: {exc}") from exc
        module = cls(ModelMetadata.from_dict(raw), bytes(body[start + meta_len:]))
        if validate:
            module.validate(device)
        return module

    # -- output -------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """One self-describing bundle: header, metadata JSON, model file, sha256 of it all."""
        meta = json.dumps(self._metadata.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        body = _BUNDLE_HEADER.pack(_BUNDLE_MAGIC, len(meta)) + meta + self._data
        return body + hashlib.sha256(body).digest()

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``relayrl-model.json`` and the model file into ``directory`` (created if needed).

        The metadata is written last, through a rename, so a reader never sees a directory
        whose metadata names a half-written file. Returns the directory.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / self._metadata.model_file).write_bytes(self._data)
        tmp = d / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(self._metadata.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, d / METADATA_FILE)
        return d

    # -- accessors ----------------------------------------------------------------------------------

    @property
    def metadata(self) -> ModelMetadata:
        """The frozen metadata."""
        return self._metadata

    @property
    def version(self) -> int | None:
        """The version stamped on the model by its producer, or None."""
        return self._metadata.version

    @property
    def data(self) -> bytes:
        """The model file's bytes."""
        return self._data

    @property
    def backend(self) -> str:
        """Name of the backend that runs it."""
        return self._metadata.backend

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""
        return self._metadata.input.shape

    @property
    def action_space(self) -> Space:
        """The action space."""
        return self._metadata.action_space

    def with_version(self, version: int | None) -> ModelModule:
        """A copy stamped with another version (same bytes, no re-validation needed)."""
        clone = ModelModule(attrs.evolve(self._metadata, version=version), self._data)
        clone._policies = self._policies
        return clone

    def with_extra(self, **extra: Any) -> ModelModule:
        """A copy whose free-form metadata is updated with ``extra``."""
        merged = {**self._metadata.extra, **extra}
        clone = ModelModule(attrs.evolve(self._metadata, extra=merged), self._data)
        clone._policies = self._policies
        return clone

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelModule):
            return NotImplemented
        return self._metadata == other._metadata and self._data == other._data

    def __hash__(self) -> int:
        return hash((self._metadata.checksum, self._metadata.version))

    def __repr__(self) -> str:
        m = self._metadata
        return (f"ModelModule(backend={m.backend!r}, obs_shape={m.input.shape}, action_space={m.action_space!r}, "
                f"head={m.policy_head!r}, value={m.value_output}, version={m.version})")

    # -- running ------------------------------------------------------------------------------------

    def policy(self, device: str = "cpu") -> Any:
        """The loaded and validated :class:`~relayrl.abc.Policy` for ``device`` (cached).

        Raises:
            ModelError, BackendUnavailableError: as for :meth:`validate`.
        """
        pol = self._policies.get(device)
        if pol is None:
            with self._lock:
                pol = self._policies.get(device)
                if pol is None:
                    pol = self._load_and_check(device)
                    self._policies[device] = pol
        return pol

    def validate(self, device: str = "cpu") -> None:
        """Load the model with its backend and run a real forward on dummy batches.

        Checks that batches of 1 and 3 observations give outputs of the declared shapes and
        that every output is finite.

        Raises:
            ModelError: the model cannot be loaded, raises, or gives wrong shapes or non-finite
                values; the message names the problem.
            BackendUnavailableError: the backend (or the device) is not available here.
        """
        self.policy(device)

    def _load_and_check(self, device: str) -> Any:
        from ._backends import get as get_backend

        backend = get_backend(self._metadata.backend)
        try:
            pol = backend.load(self, device)
        except RelayRLError:
            raise
        except Exception as exc:
            raise ModelError(f"backend {self._metadata.backend!r} cannot load {self._metadata.model_file!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
        check_policy(pol, self._metadata)
        return pol


def check_policy(policy: Any, meta: ModelMetadata) -> None:
    """Run ``policy`` on dummy batches and check it against ``meta``; raise ModelError if not."""
    rng = np.random.default_rng(12345)
    dtype = np.dtype(meta.input.dtype)
    out_dim = meta.output.shape[0]
    for batch in (1, 3):
        shape = (batch, *meta.input.shape)
        if dtype.kind == "f":
            obs = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            obs = np.zeros(shape, dtype=dtype)
        else:
            obs = rng.integers(0, 2, size=shape).astype(dtype)
        try:
            with np.errstate(all="ignore"):  # non-finite outputs are reported below, by name
                out = policy.forward(obs, None)
        except Exception as exc:
            raise ModelError(f"dummy forward on a batch of shape {shape} failed: {type(exc).__name__}: {exc}") from exc
        _check_outputs(out, meta, batch, out_dim)


def _host(a: Any) -> np.ndarray[Any, Any]:
    get = getattr(a, "get", None)  # cupy arrays
    if get is not None and not isinstance(a, np.ndarray):
        return np.asarray(get())
    return np.asarray(a)


def _check_outputs(out: Any, meta: ModelMetadata, batch: int, out_dim: int) -> None:
    def check(name: str, value: Any, shapes: tuple[tuple[int, ...], ...]) -> None:
        if value is None:
            raise ModelError(f"the model did not produce {name!r} (head {meta.policy_head!r})")
        arr = _host(value)
        if arr.shape not in shapes:
            raise ModelError(f"model output {name!r} has shape {arr.shape}, expected "
                             + " or ".join(str(s) for s in shapes))
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"model output {name!r} is not finite (NaN or inf) on a dummy batch")

    if meta.policy_head == "gaussian":
        check("mean", out.mean, ((batch, out_dim),))
        check("log_std", out.log_std, ((batch, out_dim), (out_dim,)))
    else:
        check("logits", out.logits, ((batch, out_dim),))
    if meta.value_output:
        check("value", out.value, ((batch,),))


def _from_relayrl_metadata(raw: Mapping[str, Any], data: bytes) -> ModelMetadata:
    """Translate RelayRL's ``metadata.json`` (model_file, input/output shape and dtype) to ours."""
    try:
        model_file = str(raw["model_file"])
        in_shape = [int(v) for v in raw["input_shape"]]
        out_shape = [int(v) for v in raw["output_shape"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"malformed RelayRL metadata.json: {exc!r}") from exc
    if not in_shape or not out_shape:
        raise ModelError("RelayRL metadata.json has an empty input_shape or output_shape")
    suffix = os.path.splitext(model_file)[1].lower()
    backend = _RELAYRL_BACKENDS.get(suffix)
    if backend is None:
        raise ModelError(f"RelayRL model file {model_file!r} has an unknown extension (expected .pt or .onnx)")

    def dtype_of(key: str) -> str:
        value = raw.get(key)
        if isinstance(value, dict) and value:
            name = str(next(iter(value.values()))).upper()
        elif isinstance(value, str):
            name = value.upper()
        else:
            return "float32"
        if name not in _RELAYRL_DTYPES:
            raise ModelError(f"RelayRL metadata.json has an unknown {key} {value!r}")
        return _RELAYRL_DTYPES[name]

    # RelayRL shapes carry a leading batch dimension of 1 ("input_shape": [1, 4]).
    obs_shape = tuple(in_shape[1:]) if len(in_shape) > 1 and in_shape[0] == 1 else tuple(in_shape)
    out_dims = out_shape[1:] if len(out_shape) > 1 and out_shape[0] == 1 else out_shape
    if len(out_dims) != 1:
        raise ModelError(f"RelayRL output_shape {out_shape} is not a vector of logits")
    return ModelMetadata(
        backend=backend,
        model_file=model_file,
        input=TensorSpec(shape=obs_shape, dtype=dtype_of("input_dtype")),
        output=TensorSpec(shape=(out_dims[0],), dtype="float32"),
        action_space=Discrete(out_dims[0]),
        policy_head="categorical",
        value_output=False,
        version=None,
        checksum=_sha256(data),
        extra={"relayrl_metadata": dict(raw)},
    )
