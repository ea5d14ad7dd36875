"""The GPU image's encoded entry points (issue 19): docker/triton.Dockerfile runs the
same generator command these tests run, serializes one DALI pipeline per frame size, checks
the result with `python -m deploy.encoded`, and the entrypoint's served repository (the one
Triton loads) carries every entry. Runs here with pip DALI (CPU only); what only a GPU host
confirms is listed in docs/deploy.md ("Encoded entry points")."""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

import contract
from contract import MODEL_REPOSITORY, encoded
from deploy import encoded as check
from deploy.entrypoint import parse_args
from deploy.served import assemble
from export.engines.build import engine_models
from serving import encoded as gen
from tests.conftest import REPO_ROOT
from tests.support.dali import require_dali

DOCKERFILE = REPO_ROOT / "docker" / "triton.Dockerfile"
TEST_ARGS = ["--profile", "gpu", "--out", "<out>", "--serialize"]


def instructions(stage: str) -> list[str]:
    """The instructions of one stage of the Triton Dockerfile, continuations joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out, current = [], None
    for line in text.splitlines():
        m = re.match(r"FROM\s+(?:--\S+\s+)*\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1)
            continue
        if current == stage and line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


def generator_run() -> tuple[int, list[str], str]:
    """(index of the RUN in the gpu stage, the generator's arguments, the whole RUN)."""
    for i, ins in enumerate(instructions("gpu")):
        if ins.startswith("RUN") and "serving.encoded" in ins:
            words = shlex.split(ins[3:])
            return i, words[words.index("serving.encoded") + 1:words.index("&&", words.index("serving.encoded"))], ins
    raise AssertionError("the gpu stage runs no `python3 -m serving.encoded`")


def test_the_image_runs_the_command_the_tests_run():
    i, args, run = generator_run()
    assert [("<out>" if args[k - 1] == "--out" else a) for k, a in enumerate(args)] == TEST_ARGS
    out = args[args.index("--out") + 1]
    gpu = instructions("gpu")
    env = " ".join(x for x in gpu if x.startswith("ENV"))
    home = re.search(r"VISIONSERVE_HOME=(\S+)", env).group(1)
    workdir = [x.split()[1] for x in gpu[:i] if x.startswith("WORKDIR")][-1]
    # written where the entrypoint assembles the served repository from
    assert Path(workdir) / out == Path(home) / "model_repository"
    assert parse_args([]).source.name == "model_repository"
    # after the repository is in the image, before the unprivileged user (the root fs is read-only
    # at run time: nothing is generated at start), then checked in the same layer
    copied = [k for k, x in enumerate(gpu) if x.startswith("COPY") and x.endswith(" model_repository/")]
    user = [k for k, x in enumerate(gpu) if x.startswith("USER")]
    assert copied and copied[-1] < i < user[0]
    assert re.search(rf"python3 -m deploy\.encoded {re.escape(out)}\b", run)
    # serialized by the DALI the image's backend ships (one version by construction)
    dali = re.search(r"DALI_PYTHON=(\S+)", env).group(1)
    assert dali.startswith("/opt/tritonserver/backends/dali/")
    assert run.count('PYTHONPATH="${DALI_PYTHON}:${PYTHONPATH}"') == 2


def test_the_cpu_image_derives_its_entries_at_start():
    cpu = instructions("cpu")
    entry = [x for x in cpu if x.startswith("ENTRYPOINT")][-1]
    assert '"serving", "serve"' in entry     # serving/profiles.py's derive writes the cpu entries
    assert {"COPY --from=onnx /src/imaging/ imaging/", "COPY --from=onnx /src/pipelines/ pipelines/"} <= set(cpu)


@pytest.fixture(scope="module")
def image_repository(tmp_path_factory) -> Path:
    """The image's repository after the generator RUN: the committed configs plus what the
    Dockerfile's command writes (here: --out into this copy; DALI from pip)."""
    require_dali()
    repo = tmp_path_factory.mktemp("image") / "model_repository"
    for cfg in MODEL_REPOSITORY.glob("*/config.pbtxt"):
        (repo / cfg.parent.name).mkdir(parents=True)
        shutil.copyfile(cfg, repo / cfg.parent.name / "config.pbtxt")
    _, args, _ = generator_run()
    args[args.index("--out") + 1] = str(repo)
    assert gen.main(args) == 0
    return repo


def test_every_entry_has_its_files(image_repository):
    repo = image_repository
    committed = contract.load_all(MODEL_REPOSITORY)
    models = contract.load_all(repo)        # every config parses with Triton's schema
    entries = [m for m in models if m.endswith("_encoded")]
    assert sorted(entries) == sorted(encoded.entry_name(m) for m in encoded.entry_models(committed))
    frames = set()
    for name in entries:
        target = models[name].config.parameters["encoded_entry_of"].string_value
        h, w, _ = [t for t in committed[target].inputs if t.name == "images"][0].dims
        (outer,) = [s.model_name for s in models[name].config.ensemble_scheduling.step]
        assert outer == f"{name}_cached"     # the chain behind Triton's response cache (contract/cache.py)
        steps = [s.model_name for s in models[outer].config.ensemble_scheduling.step]
        assert steps == ["encoded_check", f"letterbox_{w}x{h}", target, f"{target}_encoded_remap"]
        assert all(s in models for s in steps)
        frames.add((w, h))
    for w, h in frames:
        dali = models[f"letterbox_{w}x{h}"].config
        assert dali.backend == "dali" and list(dali.output[0].dims) == [h, w, 3]
        assert (repo / f"letterbox_{w}x{h}" / "1" / "model.dali").stat().st_size > 0
    assert {p.parent.parent.name for p in repo.glob("*/1/model.dali")} == {f"letterbox_{w}x{h}" for w, h in frames}
    for name in ["encoded_check"] + [f"{m}_encoded_remap" for m in encoded.entry_models(committed)]:
        assert models[name].config.backend == "python" and (repo / name / "1" / "model.py").is_file()


def test_the_build_check_passes_and_names_what_breaks(image_repository, tmp_path):
    assert check.problems(image_repository) == []
    broken = tmp_path / "repo"
    shutil.copytree(image_repository, broken)
    dali = sorted(broken.glob("letterbox_*/1/model.dali"))[0]
    dali.unlink()
    (broken / "encoded_check" / "config.pbtxt").write_text(
        (broken / "encoded_check" / "config.pbtxt").read_text().replace("max_batch_size: ", "max_batch_size: 1"))
    shutil.rmtree(broken / "yolo_encoded_remap")
    found = "\n".join(check.problems(broken))
    assert dali.parent.parent.name in found and "model.dali" in found
    assert "encoded_check: config.pbtxt differs" in found
    assert "yolo_encoded_remap: missing" in found
    assert "step 'yolo_encoded_remap' is no model" in found
    assert check.main([str(broken)]) == 2 and check.main([str(image_repository)]) == 0


def test_start_up_serves_them_from_the_image(image_repository, tmp_path):
    """`python -m deploy serve` assembles the repository Triton loads from the image's: every
    generated model is there with its config and its model.dali / model.py; the entries add
    no plan model (the plan keys, the init `check` and the plan-build Job are unchanged)."""
    assert engine_models(image_repository) == engine_models(MODEL_REPOSITORY)
    served = assemble(image_repository, tmp_path / "served", {})
    generated = [p.parent.name for p in image_repository.glob("*/config.pbtxt")
                 if p.parent.name not in contract.load_all(MODEL_REPOSITORY)]
    assert generated
    for name in generated:
        assert (served / name / "config.pbtxt").read_bytes() == (image_repository / name / "config.pbtxt").read_bytes()
        for f in (image_repository / name / "1").iterdir():
            link = served / name / "1" / f.name
            assert link.is_symlink() and link.resolve() == f.resolve()
    assert check.problems(served) == []
