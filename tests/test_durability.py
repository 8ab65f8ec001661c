"""The fsync order of the commit protocol, read from a real producer's system calls.

A kill -9 keeps the page cache, so it cannot show that anything reached the disk. The order of
the calls can: every rename that publishes something must come after the fsyncs of what it
publishes, and a version's removal must be durable as a hiding rename before anything is deleted.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from shared import layout
from tests.helpers import REPO, command, env

STRACE = shutil.which("strace")
CALL = re.compile(r'^\d+\s+(\w+)\((.*)\)\s+= 0$')
FD_PATH = re.compile(r'\d+<([^>]*)>')
QUOTED = re.compile(r'"([^"]*)"')


def _trace(tmp_path, *producer_args) -> list[tuple[str, list[str]]]:
    """(call, paths) for each successful fsync, mkdir, rename, unlink and rmdir of the producer."""
    trace = tmp_path / "trace"
    cmd = [STRACE, "-f", "-y", "-qq", "-o", str(trace),
           "-e", "trace=fsync,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir",
           *command("producer", *producer_args)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    calls = []
    for line in trace.read_text().splitlines():
        if match := CALL.match(line):
            name, args = match.groups()
            paths = FD_PATH.findall(args) if name == "fsync" else QUOTED.findall(args)
            calls.append((name, paths))
    return calls


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (make test installs it)")
def test_each_commit_follows_the_fsync_of_everything_it_publishes(tmp_path):
    exports = tmp_path / "exports"
    calls = _trace(tmp_path, "--export-dir", exports, "--steps", 300, "--checkpoint-every", 100,
                   "--export-every", 100, "--keep-exports", 1, "--keep-checkpoints", 1)
    synced = lambda upto: {paths[0] for name, paths in calls[:upto] if name == "fsync"}  # noqa: E731
    savedmodels, checkpoints = str(layout.savedmodels_dir(exports)), str(layout.checkpoints_dir(exports))
    commits = [(i, paths) for i, (name, paths) in enumerate(calls) if name.startswith("rename")]
    versions = [(i, src, dst) for i, (src, dst) in commits
                if re.fullmatch(re.escape(savedmodels) + r"/\d+", dst)]
    states = [(i, src) for i, (src, dst) in commits if dst == str(layout.state_file(exports))]
    assert [dst.rsplit("/", 1)[1] for _, _, dst in versions] == ["100", "200", "300"]
    assert len(states) == 3

    made = {paths[0]: j for j, (name, paths) in enumerate(calls) if name.startswith("mkdir")}
    for sub in (savedmodels, checkpoints):  # claim's mkdirs are durable before any commit
        assert ("fsync", [str(exports)]) in calls[made[sub]:commits[0][0]], sub

    for i, staging, final in versions:  # a SavedModel: its whole staging tree, then the rename
        assert ("fsync", [savedmodels]) in calls[made[staging]:i], staging  # the staging entry
        before = synced(i)
        staged = [p for name, paths in calls[:i] for p in paths if p.startswith(staging + "/")]
        assert staged and set(p for p in staged if p in before) >= {
            f"{staging}/saved_model.pb", f"{staging}/commit.json",
            f"{staging}/variables/variables.index"}, final
        assert staging in before
        assert ("fsync", [savedmodels]) in calls[i:]  # and the commit itself made durable

    for (i, _), step in zip(states, (100, 200, 300)):  # a checkpoint: files, dir, state file
        prefix = f"{checkpoints}/model.ckpt-{step}"
        before = synced(i)
        assert {f"{prefix}.index", f"{prefix}.meta", f"{prefix}.data-00000-of-00001"} <= before
        data_moved = max(j for j, (name, paths) in enumerate(calls[:i])
                         if name.startswith("rename") and paths[1].startswith(prefix))
        assert ("fsync", [checkpoints]) in calls[data_moved:i], step

    hidden = [(i, dst) for i, (src, dst) in commits if "/.tmp-discard-" in dst]
    assert hidden  # retention removed versions 100 and 200
    for i, path in hidden:
        first_delete = next(j for j, (name, paths) in enumerate(calls)
                            if j > i and name in ("unlink", "unlinkat", "rmdir")
                            and any(p.startswith(path) for p in paths))
        assert ("fsync", [savedmodels]) in calls[i:first_delete], path
