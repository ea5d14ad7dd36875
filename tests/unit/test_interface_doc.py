"""Docs sections generated from the contract (contract/docs.py) must match the configs."""
import pytest

import contract
from contract import REPO_ROOT, docs, load_all


@pytest.mark.parametrize("path", docs.documents(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_generated_sections_match_the_configs(path):
    for name, section in docs.embedded(path.read_text()).items():
        assert section == docs.render(name), \
            f"{path.name}: the {name} section is stale: run `python -m contract.docs --write`"


def test_readme_embeds_the_interface_and_the_routes():
    assert {"interface", "routes", "models"} <= set(docs.embedded((REPO_ROOT / "README.md").read_text()))


def test_every_model_and_route_is_documented():
    rendered = docs.render("interface")
    for name in load_all():
        assert f"**`{name}`**" in rendered
    routes = docs.render("routes")
    for name, c in load_all().items():
        if c.parameter("route", ""):
            assert f"`{name}`" in routes, name


def test_a_stale_section_is_found(tmp_path):
    """The check can fail: a section that lists one model too few differs from the render."""
    contracts = load_all()
    fewer = {k: v for k, v in contracts.items() if k != "yolo"}
    assert docs.render("routes", fewer) != docs.render("routes", contracts)
    doc = tmp_path / "README.md"
    doc.write_text(f"x\n{docs.begin('routes')}\n{docs.render('routes', fewer)}{docs.end('routes')}\ny\n")
    assert docs.embedded(doc.read_text())["routes"] != docs.render("routes")
    assert contract.MODEL_REPOSITORY.is_dir()
