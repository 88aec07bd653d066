"""Any verifier with the VNN-COMP script interface as a complete verifier (``--backend external``).

``--verifier-cmd`` names the tool's ``run_instance.sh`` (extra words are passed before the arguments). Each spec
the native bound leaves open becomes one instance in a private benchmark folder: the model copied to ``onnx/``,
the spec written to ``vnnlib/``; ``prepare_instance.sh v1 <benchmark> <onnx> <vnnlib>`` runs first when it sits
beside ``run_instance.sh``, then ``run_instance.sh v1 <benchmark> <onnx> <vnnlib> <results_file> <timeout>``.
The result file is read with :func:`robverify.formats.vnncomp_result.parse_result`. A crash, a missing or unreadable result
file, or a tool that overruns its timeout (plus a grace period; it is then killed with its process group) gives
``error`` or ``timeout``, never ``verified``; ``sat`` and ``unsat`` answers are judged by
:class:`~robverify.backends.base.CompleteBackend` (counterexample confirmed by onnxruntime; unsat cross-checked
with PGD).

This backend writes VNN-LIB through :mod:`robverify.formats.vnnlib_read`, the one place where a core module reaches up
into ``properties`` (lazily, when a query is made): the VNN-LIB writer lives there and is not duplicated.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import weakref
from pathlib import Path

import torch

from robverify.backends.base import AttackConfig, BackendOptions, CompleteBackend, QueryAnswer
from robverify.errors import RobverifyError
from robverify.ir.model import LoadedModel
from robverify.spec import Method, Spec, Verdict
from robverify.formats.vnncomp_result import Result, parse_result

#: seconds a tool may run past its timeout before it is killed
GRACE_S = 10.0
#: the benchmark name passed to the scripts
BENCHMARK = "robverify"


def tool_command(verifier_cmd: str | None) -> list[str]:
    """The words of ``--verifier-cmd``; its first word must be an executable file (or a program on PATH)."""
    if not verifier_cmd or not verifier_cmd.strip():
        raise RobverifyError("--backend external needs --verifier-cmd (the tool's run_instance.sh)")
    try:
        words = shlex.split(verifier_cmd)
    except ValueError as exc:
        raise RobverifyError(f"--verifier-cmd: cannot split {verifier_cmd!r}: {exc}") from None
    program = Path(words[0]).expanduser()
    if program.is_file():
        if not os.access(program, os.X_OK):
            raise RobverifyError(f"--verifier-cmd: {program} is not executable (chmod +x it)")
        return [str(program.resolve()), *words[1:]]
    found = shutil.which(words[0]) if "/" not in words[0] else None
    if found is None:
        raise RobverifyError(f"--verifier-cmd: unknown verifier command {words[0]!r} (no such executable file)")
    return [found, *words[1:]]


class ExternalBackend(CompleteBackend):
    """A VNN-COMP tool driven through its scripts; ``options.timeout`` seconds per instance (default 60)."""

    name = "external"
    attack_first = False  # ask the tool first, then hold its unsat against PGD
    grace_s = GRACE_S

    def __init__(self, model: LoadedModel, method: Method | str = Method.CROWN, *, batch_size: int = 256,
                 attack: AttackConfig | None = None, options: BackendOptions | None = None) -> None:
        super().__init__(model, method, batch_size=batch_size, attack=attack, options=options)
        self.command = tool_command(self.options.verifier_cmd)
        # prepare_instance.sh beside run_instance.sh, started the same way ("bash .../run_instance.sh" too)
        at = next((k for k, w in enumerate(self.command) if Path(w).name == "run_instance.sh"), None)
        prepare = Path(self.command[at]).parent / "prepare_instance.sh" if at is not None else None
        self.prepare = [*self.command[:at], str(prepare)] if prepare is not None and prepare.is_file() else None
        self.folder = Path(tempfile.mkdtemp(prefix="robverify-external-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.onnx = self.folder / "onnx" / f"{model.name}.onnx"
        self.onnx.parent.mkdir()
        shutil.copyfile(model.path, self.onnx)
        self.n_inputs = math.prod(model.graph.input_shape)
        self.n_queries = 0

    def provenance(self) -> dict[str, str | None]:
        """The tool's command line (``external_command``) and the SHA-256 of its script
        (``external_command_sha256``; None when the command is a program found on PATH that cannot be read)."""
        from robverify.files import file_sha256

        try:
            digest = file_sha256(self.command[0])
        except RobverifyError:
            digest = None
        return {"external_command": shlex.join(self.command), "external_command_sha256": digest}

    def _run(self, argv: list[str], limit: float) -> tuple[int | None, str]:
        """Run ``argv`` in its own process group; ``(returncode, stderr tail)``, returncode None on overrun."""
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                cwd=self.folder, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return None, ""
        tail = err.decode("utf-8", "replace").strip().splitlines()
        return proc.returncode, (tail[-1][:200] if tail else "")

    def _query(self, spec: Spec) -> QueryAnswer:
        from robverify.formats.vnnlib_write import write_spec_vnnlib

        self.n_queries += 1
        stem = f"q{self.n_queries:06d}"
        vnnlib = write_spec_vnnlib(self.folder / "vnnlib" / f"{stem}.vnnlib", spec, 0,
                                   comment=f"query {self.n_queries} of robverify's external backend")
        results = self.folder / "results" / f"{stem}.txt"
        results.parent.mkdir(exist_ok=True)
        timeout = self.timeout
        try:
            if self.prepare is not None:
                code, err = self._run([*self.prepare, "v1", BENCHMARK, str(self.onnx), str(vnnlib)],
                                      timeout + self.grace_s)
                if code != 0:
                    why = "overran its time" if code is None else f"exited with {code}"
                    return QueryAnswer(Verdict.ERROR, None, f"prepare_instance.sh {why}: {err}".rstrip(": "))
            code, err = self._run([*self.command, "v1", BENCHMARK, str(self.onnx), str(vnnlib), str(results),
                                   f"{timeout:g}"], timeout + self.grace_s)
        except OSError as exc:
            return QueryAnswer(Verdict.ERROR, None, f"cannot run the verifier: {exc}")
        if code is None:
            return QueryAnswer(Verdict.TIMEOUT, None, f"the verifier ran past {timeout:g} s + {self.grace_s:g} s")
        if code != 0:
            return QueryAnswer(Verdict.ERROR, None, f"the verifier exited with {code}: {err}".rstrip(": "))
        try:
            text = results.read_text(encoding="utf-8", errors="replace")[:50_000_000]
        except OSError:
            return QueryAnswer(Verdict.ERROR, None, "the verifier wrote no result file")
        parsed = parse_result(text, self.n_inputs, self.model.graph.n_outputs)
        if parsed.result is Result.SAT:
            lo = spec.x_lo[0].detach().cpu().double().reshape(-1)
            hi = spec.x_hi[0].detach().cpu().double().reshape(-1)
            x = torch.minimum(torch.maximum(parsed.x, lo), hi).reshape(spec.x_lo.shape[1:])
            return QueryAnswer(Verdict.FALSIFIED, x, "the verifier answered sat")
        reason = parsed.problem or f"the verifier answered {parsed.result.value}"
        return QueryAnswer(parsed.result.verdict, None, reason)
