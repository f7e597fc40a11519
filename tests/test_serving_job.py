"""The service as a job: the launcher's command (local and cluster), the Service that reaches rank 0 on worker 0,
and a real local job that serves and ends Succeeded after /shutdown."""

from __future__ import annotations

import pytest
from kit_testing import fake_cluster, kit_processes, wait_for_no_kit_processes, wait_until

from labkit import launch, manifests
from labkit.errors import ConfigError
from labkit.jobs import LocalBackend
from labkit.serving import job, local, models
from labkit.serving.config import ServeConfig


def test_cluster_command_runs_every_rank_through_openmpi_over_the_hostfile():
    config = ServeConfig(host="0.0.0.0", port=8000)
    argv = job.serve_command(config, one_host=False)
    line = " ".join(argv)
    assert argv[:3] == ["deepspeed", "--hostfile", "/etc/mpi/hostfile"] and "--force_multi --launcher openmpi" in line
    assert f"--ssh_port {manifests.SSH_PORT}" in line and "--module labkit.ranks.serve" in line
    assert ServeConfig.from_argv(argv[argv.index("labkit.ranks.serve") + 1 :]) == config


def test_job_spec_is_validated_before_submitting():
    with pytest.raises(ConfigError) as err:  # 3 ranks cannot split the regressor tensor-parallel
        job.job_spec(ServeConfig(), one_host=False, workers=3, slots_per_worker=1)
    assert err.value.field == "world_size"
    with pytest.raises(ConfigError) as err:
        job.job_spec(ServeConfig(), one_host=False, name="Bad_Name")
    assert err.value.field == "name"


def test_service_selects_worker_0_where_rank_0_runs_on_the_fake_cluster():
    config = ServeConfig(host="0.0.0.0", port=8000)
    spec = job.job_spec(config, one_host=False, name="serve-demo", workers=2, slots_per_worker=1)
    service, policy = job.render_service(spec, config)  # validated against Kubernetes' schemas
    assert service["spec"]["ports"][0]["targetPort"] == 8000 and service["metadata"]["name"] == "serve-demo-serve"
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 8000, "protocol": "TCP"}]
    service["metadata"]["labels"]["team"] = "a"  # one object edited (kustomize, a user) leaves the other as rendered
    service["spec"]["selector"]["extra"] = "b"
    assert "team" not in policy["metadata"]["labels"] and "extra" not in policy["spec"]["podSelector"]["matchLabels"]
    del service["metadata"]["labels"]["team"], service["spec"]["selector"]["extra"]
    mpijob = next(o for o in manifests.render_all(spec) if o["kind"] == "MPIJob")
    assert mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"] == (
        spec.launcher_command
    )
    with fake_cluster(ready_delay=0.2) as (_api, backend):
        submitted = backend.submit(spec)
        submitted.wait_ready(timeout=20)
        selector = ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items())
        pods = backend._core().list_namespaced_pod(spec.namespace, label_selector=selector).items
        assert [p.metadata.name for p in pods] == ["serve-demo-worker-0"]  # one pod: rank 0's, not the launcher
        submitted.delete()


@pytest.mark.slow
def test_local_job_serves_and_ends_succeeded_after_shutdown(tmp_path):
    config = ServeConfig(port=launch.free_port())
    spec = job.job_spec(config, one_host=True, name="serve-test", workers=1, slots_per_worker=2)
    backend = LocalBackend(root=tmp_path / "jobs")
    client = local.HttpClient(f"http://127.0.0.1:{config.port}")

    def healthy() -> bool:
        try:
            return client.healthz()[0] == 200
        except OSError:
            return False

    with backend.submit(spec) as served:
        served.wait_ready(60)
        assert wait_until(healthy, 240, 0.2), served.logs()[-3000:]
        rows = [[0.25 * i for i in range(10)], [-1.0] * 10]
        got, want = client.predict(rows), models.reference_outputs("regressor", rows)
        assert all(abs(a[0] - b[0]) < 1e-5 for a, b in zip(got, want))
        assert client.request("POST", "/shutdown")[0] == 200
        assert wait_until(lambda: served.status().phase != "Running", 30, 0.2)
        assert served.status().phase == "Succeeded", served.logs()[-3000:]
    assert not wait_for_no_kit_processes(), kit_processes()


def test_the_cli_prints_what_kubectl_applies_to_serve_in_a_cluster(capsys):
    """`labkit serve --job-yaml`: the MPIJob whose launcher runs the service (rank 0 on every interface, the
    accelerator's device), the Service to worker 0 and the NetworkPolicy, every object validated; nothing starts."""
    import yaml

    from labkit.cli import main

    assert main(["serve", "--job-yaml", "--name", "serve-demo", "--accelerator", "nvidia", "--slots", "1"]) == 0
    out = capsys.readouterr().out
    assert "# kubectl apply -n workloads" in out and "service/serve-demo-serve" in out
    objects = [o for o in yaml.safe_load_all(out) if o]
    assert [o["kind"] for o in objects] == ["MPIJob", "Service", "NetworkPolicy"]
    args = objects[0]["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    served = ServeConfig.from_argv(args[args.index("labkit.ranks.serve") + 1 :])
    assert (served.host, served.device, served.port) == ("0.0.0.0", "cuda", 8000)
    assert objects[1]["spec"]["selector"] == job.rank0_selector("serve-demo")
    assert main(["serve", "--job-yaml", "--workers", "3", "--slots", "1"]) == 2  # 3 ranks cannot split the model
    assert "world_size" in capsys.readouterr().err


@pytest.mark.parametrize("accelerator", ["nvidia", "gaudi"])
def test_the_lab_pod_may_reach_rank_0_whatever_namespace_the_job_runs_in(accelerator):
    """A NetworkPolicy peer with only a podSelector selects pods of the policy's own namespace (k8s.io/api
    networking/v1 NetworkPolicyPeer): Gaudi jobs run in workloads-gaudi, the lab in workloads, so the lab's
    namespace is named too; a job beside the lab needs (and gets) no second peer."""
    config = ServeConfig(host="0.0.0.0", port=8000)
    spec = job.job_spec(config, one_host=False, name="serve-demo", accelerator=accelerator, workers=1)
    _, policy = job.render_service(spec, config)
    peers = policy["spec"]["ingress"][0]["from"]
    lab_pod = {"matchLabels": {"app.kubernetes.io/component": "lab"}}
    assert policy["metadata"]["namespace"] == manifests.NAMESPACES[accelerator]
    assert peers[0] == {"podSelector": lab_pod}
    if accelerator == "gaudi":
        lab_namespace = {"matchLabels": {"kubernetes.io/metadata.name": "workloads"}}
        assert peers[1:] == [{"namespaceSelector": lab_namespace, "podSelector": lab_pod}]
    else:
        assert len(peers) == 1


def test_in_a_learners_lab_the_job_yaml_names_her_namespaces(monkeypatch, capsys):
    """In alice's lab (LABKIT_NAMESPACE=alice) a Gaudi service goes to alice-gaudi and lets her lab pod in, from alice;
    --namespace still wins."""
    import yaml

    from labkit.cli import main

    monkeypatch.setenv("LABKIT_NAMESPACE", "alice")
    assert main(["serve", "--job-yaml", "--accelerator", "gaudi", "--workers", "1", "--slots", "1"]) == 0
    out = capsys.readouterr().out
    assert "# kubectl apply -n alice-gaudi" in out and "from the lab pod (namespace alice)" in out
    policy = [o for o in yaml.safe_load_all(out) if o][-1]
    lab_namespace = {"matchLabels": {"kubernetes.io/metadata.name": "alice"}}
    assert policy["metadata"]["namespace"] == "alice-gaudi"
    assert policy["spec"]["ingress"][0]["from"][1]["namespaceSelector"] == lab_namespace
    assert main(["serve", "--job-yaml", "--namespace", "team-b", "--workers", "1", "--slots", "1"]) == 0
    assert "# kubectl apply -n team-b" in capsys.readouterr().out
