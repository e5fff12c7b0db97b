"""The test bed bootstrap is idempotent: a second run on a ready machine builds nothing."""

from __future__ import annotations

from tests.conftest import ROOT, run

LABEL = '{{index .Config.Labels "opsauto.build-hash"}}'


def test_rerun_skips_everything_that_exists(docker_ready):
    proc = run(["bash", "scripts/bootstrap.sh"], timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "building" not in proc.stdout, proc.stdout
    assert "base image: debian:bookworm-slim present" in proc.stdout
    tags = [
        line.split("\t")[0]
        for line in (ROOT / "stack" / "images.tsv").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for tag in [*tags, "opsauto/dockerhost:bookworm"]:
        assert f"image: {tag} up to date" in proc.stdout, proc.stdout
        label = run(["docker", "image", "inspect", "-f", LABEL, tag])
        assert label.returncode == 0, f"{tag} missing: {label.stderr}"
        assert label.stdout.strip(), f"{tag} has no build-hash label"
