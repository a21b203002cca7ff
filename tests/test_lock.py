"""requirements.lock is one universal lock (issue 35): `make install` installs it as is on Linux
x86_64, Linux aarch64 and macOS arm64, and each line's environment marker decides where it
applies. torch 2.14.1 depends on the CUDA wheels (cuda-toolkit, nvidia-*, triton, ...) for
platform_system == "Linux" on either machine, so both Linux machines get them and macOS none.

The markers are evaluated here with `packaging` against the three environments; no network."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"

PYTHON = {"python_version": "3.11", "python_full_version": "3.11.7", "implementation_name": "cpython",
          "implementation_version": "3.11.7", "platform_python_implementation": "CPython", "os_name": "posix",
          "platform_release": "", "platform_version": ""}
ENVIRONMENTS = {
    "linux-x86_64": {**PYTHON, "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    "linux-aarch64": {**PYTHON, "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
    "macos-arm64": {**PYTHON, "sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
}
LINUX = ("linux-x86_64", "linux-aarch64")
# What the toy needs everywhere, and the test extra `make test` runs with.
EVERYWHERE = ("torch", "torchvision", "open-clip-torch", "snakemake", "clip-benchmark", "pytest", "pytest-timeout")
CUDA = re.compile(r"^(nvidia-.+|cuda-.+|triton)$")  # canonical names of the CUDA-only wheels


def lock_requirements() -> list[Requirement]:
    lines = [line.strip() for line in LOCK.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def selected(environment: str) -> list[Requirement]:
    return [req for req in lock_requirements()
            if req.marker is None or req.marker.evaluate(ENVIRONMENTS[environment])]


def names(requirements: list[Requirement]) -> list[str]:
    return [canonicalize_name(req.name) for req in requirements]


def cuda_names() -> set[str]:
    return {name for name in names(lock_requirements()) if CUDA.match(name)}


def test_the_lock_states_the_universal_compile_command_that_regenerates_it():
    header = [line for line in LOCK.read_text().splitlines()[:5] if line.startswith("#")]
    command = " ".join(header)
    assert "uv pip compile" in command and "--universal" in command and "-o requirements.lock" in command, header


def test_every_line_pins_one_exact_version():
    for req in lock_requirements():
        specs = list(req.specifier)
        assert req.url is None and len(specs) == 1, str(req)
        assert specs[0].operator == "==" and "*" not in specs[0].version, str(req)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_package_is_selected_at_most_once_per_environment(environment):
    chosen = names(selected(environment))
    assert sorted({name for name in chosen if chosen.count(name) > 1}) == []


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_toy_and_its_test_tools_are_selected_on_every_platform(environment):
    missing = set(EVERYWHERE) - set(names(selected(environment)))
    assert not missing, f"{environment} lacks {sorted(missing)}"


def test_the_lock_holds_the_cuda_wheels_torch_needs_on_linux():
    assert {"cuda-toolkit", "triton"} <= cuda_names()
    assert any(name.startswith("nvidia-") for name in cuda_names())


@pytest.mark.parametrize("environment", LINUX)
def test_every_cuda_wheel_is_selected_on_linux_x86_64_and_aarch64_as_torch_requires(environment):
    assert cuda_names() <= set(names(selected(environment)))


def test_no_cuda_wheel_is_selected_on_macos_arm64():
    assert sorted(cuda_names() & set(names(selected("macos-arm64")))) == []


def test_every_cuda_wheel_is_marked_linux_only():
    elsewhere = [{**ENVIRONMENTS["macos-arm64"], "platform_machine": "x86_64"},
                 {**PYTHON, "os_name": "nt", "sys_platform": "win32", "platform_system": "Windows",
                  "platform_machine": "AMD64"}]
    for req in lock_requirements():
        if CUDA.match(canonicalize_name(req.name)):
            assert req.marker is not None, f"{req} is selected everywhere"
            for environment in [ENVIRONMENTS["macos-arm64"], *elsewhere]:
                assert not req.marker.evaluate(environment), (str(req), environment["sys_platform"])


def test_both_linux_machines_select_the_same_pins_and_macos_a_subset_less_the_cuda_wheels():
    linux_x86, linux_arm, macos = ({str(req.name) + str(req.specifier) for req in selected(env)}
                                   for env in ("linux-x86_64", "linux-aarch64", "macos-arm64"))
    assert linux_x86 == linux_arm
    assert macos <= linux_x86
    dropped = {canonicalize_name(Requirement(pin).name) for pin in linux_x86 - macos}
    assert dropped - cuda_names() <= {"greenlet"}  # sqlalchemy wants greenlet on x86_64/aarch64 machines only

