"""Test and demo infrastructure: real etcd servers and namespace hosts.

``Cluster`` (namespace hosts) is the default implementation of the cluster interface that
scenario tests are written against.
"""

from integration.etcd import EtcdCluster, EtcdServer, free_port

__all__ = ["EtcdCluster", "EtcdServer", "free_port"]
