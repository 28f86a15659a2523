"""Ray's fake multi-node provider, with each node type's environment (the rehearsal's node provider).

Ray's ``fake_multinode`` provider starts every worker node as processes of this machine with the environment
of the autoscaler that starts them. A Kubernetes worker group's containers have their own ``env`` (the API token
the Serve ingress reads is only on the CPU group's; a launcher node type's docker ``--env-file``), so this
provider sets a node type's ``node_config.env`` (and the variables of its ``env_files``, read when the node starts)
while it starts a node of that type: the node's raylet, and every Ray worker it starts, inherit them.
Loaded by the autoscaler as ``provider: {type: external, module: rehearsal_provider.RehearsalProvider}``.
"""

from __future__ import annotations

import os

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class RehearsalProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        node_config = node_config or {}
        env = {k: str(v) for k, v in node_config.get("env", {}).items()}
        for path in node_config.get("env_files", []):  # docker's --env-file: read when the node starts
            for line in open(path).read().splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    key, value = line.split("=", 1)
                    env[key.strip()] = value.strip()
        with self.lock:  # nodes start one at a time: the environment is this process's while one starts
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
