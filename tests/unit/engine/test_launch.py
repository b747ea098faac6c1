"""quantgate.engine.launch: container commands and attach settings (no container runtime needed)."""

from __future__ import annotations

import pytest

from quantgate.config.matrix import EngineConfig
from quantgate.engine.launch import ContainerSpec, LauncherError, attach_kernel_log, from_env
from quantgate.engine.launch.container import container_command, container_stop_command

CFG = EngineConfig(id="sm121-coder-nvfp4-vllm-cutlass", model="/data/m", quantization="nvfp4",
                   hardware=("sm121",), env={"VLLM_USE_FLASHINFER_MOE_FP4": "0"})


def test_podman_command_like_seed_001(tmp_path) -> None:
    model = tmp_path / "Qwen3-Coder-30B-A3B-Instruct-NVFP4"
    model.mkdir()
    argv = ["--host", "127.0.0.1", "--port", "41234", "--served-model-name", CFG.id, "--seed", "42"]
    cmd = container_command(ContainerSpec("localhost/vllm-turbo:dual"), CFG, str(model), None, 41234, argv)
    assert cmd[:3] == ["podman", "run", "--rm"]
    assert "nvidia.com/gpu=all" in cmd and "--security-opt=label=disable" in cmd
    assert "127.0.0.1:41234:8000" in cmd  # published on loopback only
    assert f"{model}:{model}:ro" in cmd
    assert "VLLM_USE_FLASHINFER_MOE_FP4=0" in cmd
    assert "VLLM_API_KEY" in cmd and not any(c.startswith("VLLM_API_KEY=") for c in cmd)  # value from env
    tail = cmd[cmd.index("localhost/vllm-turbo:dual"):]
    assert tail[:3] == ["localhost/vllm-turbo:dual", "vllm", "serve"]
    assert tail[tail.index("--host") + 1] == "0.0.0.0" and tail[tail.index("--port") + 1] == "8000"
    assert container_stop_command(ContainerSpec("x"), CFG, 41234) == [
        "podman", "rm", "-f", f"quantgate-{CFG.id}-41234"]


def test_docker_uses_gpus_all() -> None:
    cmd = container_command(ContainerSpec("img", runtime="docker"), CFG, "/data/m", "/data/d", 1, [])
    assert cmd[cmd.index("--gpus") + 1] == "all"
    assert "/data/d:/data/d:ro" in cmd


def test_settings_from_env(tmp_path) -> None:
    assert from_env({}).kind == "local"
    with pytest.raises(LauncherError, match="QUANTGATE_CONTAINER_IMAGE"):
        from_env({"QUANTGATE_LAUNCHER": "container"})
    with pytest.raises(LauncherError, match="QUANTGATE_ATTACH_URL"):
        from_env({"QUANTGATE_LAUNCHER": "attach"})
    with pytest.raises(LauncherError, match="use local, container or attach"):
        from_env({"QUANTGATE_LAUNCHER": "k8s"})
    s = from_env({"QUANTGATE_LAUNCHER": "container", "QUANTGATE_CONTAINER_IMAGE": "i",
                  "QUANTGATE_CONTAINER_RUNTIME": "docker", "QUANTGATE_CONTAINER_ARGS": "--network none -e A=1"})
    assert s.container == ContainerSpec("i", "docker", ("--network", "none", "-e", "A=1")) and not s.notes
    a = from_env({"QUANTGATE_LAUNCHER": "attach", "QUANTGATE_ATTACH_URL": "http://127.0.0.1:8011/"})
    assert a.attach is not None and a.attach.base_url == "http://127.0.0.1:8011"
    text, why = attach_kernel_log(a.attach)
    assert text is None and "QUANTGATE_ATTACH_LOG" in why
    log = tmp_path / "server.log"
    log.write_text("INFO Using FLASH_ATTN attention backend\n")
    b = from_env({"QUANTGATE_LAUNCHER": "attach", "QUANTGATE_ATTACH_URL": "http://h:1",
                  "QUANTGATE_ATTACH_LOG": str(log)})
    assert b.attach is not None and attach_kernel_log(b.attach)[0].startswith("INFO")


@pytest.mark.fault("security", "containers", "never --privileged; port published on 127.0.0.1 only; API key passed "
                   "by name from the environment")
@pytest.mark.parametrize("runtime", ["podman", "docker"])
def test_container_is_never_privileged(runtime: str) -> None:
    cmd = container_command(ContainerSpec("img", runtime=runtime), CFG, "/data/m", None, 4321, [])
    assert not any("privileged" in part for part in cmd)
    assert "127.0.0.1:4321:" + cmd[cmd.index("-p") + 1].split(":")[-1] == cmd[cmd.index("-p") + 1]
    assert cmd[cmd.index("-e") + 1] == "VLLM_API_KEY"


UNSAFE = ["--privileged", "--privileged=true", "--network host", "--network=host", "--net=host", "--cap-add SYS_ADMIN",
          "--cap-add=ALL", "--pid host", "--pid=host", "--userns=host", "-v /:/host", "-v/:/host", "--volume=/etc:/e",
          "--mount type=bind,source=/,target=/h", "-v /var/run/docker.sock:/s", "-p 8000:8000", "--publish=0.0.0.0:1:1",
          "-P", "--security-opt seccomp=unconfined", "--network container:other"]


@pytest.mark.fault("security", "QUANTGATE_CONTAINER_ARGS that open the network or grant privileges "
                   "(--privileged, --network host, --cap-add, --pid host, -v /:/..., -p beyond 127.0.0.1)",
                   "refused naming the flag, unless QUANTGATE_CONTAINER_ALLOW_UNSAFE=1 (then a warning in the report)")
@pytest.mark.parametrize("args", UNSAFE)
def test_unsafe_container_args_refused(args: str) -> None:
    env = {"QUANTGATE_LAUNCHER": "container", "QUANTGATE_CONTAINER_IMAGE": "i", "QUANTGATE_CONTAINER_RUNTIME": "docker",
           "QUANTGATE_CONTAINER_ARGS": f"-e A=1 {args}"}
    with pytest.raises(LauncherError, match="QUANTGATE_CONTAINER_ARGS refused: .*QUANTGATE_CONTAINER_ALLOW_UNSAFE=1"):
        from_env(env)
    allowed = from_env({**env, "QUANTGATE_CONTAINER_ALLOW_UNSAFE": "1"})
    assert allowed.notes and all("QUANTGATE_CONTAINER_ALLOW_UNSAFE=1" in n for n in allowed.notes)


@pytest.mark.parametrize("args", ["--network none", "--privileged=false", "-v /data/models:/models:ro",
                                  "-p 127.0.0.1:9000:9000", "--shm-size 32g", "--security-opt label=disable",
                                  "-e HOME=/", "--mount type=bind,source=/data,target=/data"])
def test_safe_container_args_pass(args: str) -> None:
    s = from_env({"QUANTGATE_LAUNCHER": "container", "QUANTGATE_CONTAINER_IMAGE": "i",
                  "QUANTGATE_CONTAINER_RUNTIME": "docker", "QUANTGATE_CONTAINER_ARGS": args})
    assert s.container is not None and not s.notes
