"""The garbage collector deletes objects whose owner is deleted."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.support.kube import apis
from tests.support.wait import wait_for

pytestmark = pytest.mark.cluster


def gone(core: Any, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_config_map(name, namespace)
    except apis.ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


@pytest.mark.parametrize("propagation", ["Background", "Foreground"])
def test_deleting_owner_deletes_dependents(
    kube_api: client.ApiClient, namespace: str, propagation: str
) -> None:
    core = apis.core(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}, "data": {"role": "owner"}}
    )
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "data": {"role": "dependent"},
        },
    )

    core.delete_namespaced_config_map("owner", namespace, propagation_policy=propagation)

    wait_for(lambda: gone(core, namespace, "dependent"), timeout=30, what="dependent deleted")
    wait_for(lambda: gone(core, namespace, "owner"), timeout=30, what="owner deleted")
