"""netd's flags: flannel's names, NETD_<FLAG> environment fallbacks, durations."""

import argparse

import pytest

from netd.cli.agent_main import build_parser, parse_duration


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("30m", 1800), ("90s", 90), ("45", 45), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration_is_a_clear_error():
    with pytest.raises(argparse.ArgumentTypeError, match="expected a duration such as 24h"):
        parse_duration("soon")


def test_defaults_are_flannels():
    args = build_parser().parse_args([])
    assert args.etcd_endpoints == "http://127.0.0.1:2379"
    assert args.etcd_prefix == "/coreos.com/network"
    assert args.subnet_file == "/run/flannel/subnet.env"
    assert args.subnet_lease_ttl == 86400
    assert args.ip_masq is False


def test_every_flag_reads_netd_environment(monkeypatch):
    env = {
        "NETD_ETCD_ENDPOINTS": "http://10.0.0.1:2379",
        "NETD_ETCD_PREFIX": "/x/network",
        "NETD_ETCD_CAFILE": "/ca", "NETD_ETCD_CERTFILE": "/c", "NETD_ETCD_KEYFILE": "/k",
        "NETD_IFACE": "eth1", "NETD_PUBLIC_IP": "192.0.2.7", "NETD_SUBNET_FILE": "/tmp/s.env",
        "NETD_IP_MASQ": "true", "NETD_SUBNET_LEASE_TTL": "2h", "NETD_HEALTHZ_PORT": "9999",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    a = build_parser().parse_args([])
    assert (a.etcd_endpoints, a.etcd_prefix, a.etcd_cafile, a.etcd_certfile, a.etcd_keyfile) == (
        "http://10.0.0.1:2379", "/x/network", "/ca", "/c", "/k")
    assert (a.iface, a.public_ip, a.subnet_file, a.ip_masq, a.subnet_lease_ttl, a.healthz_port) == (
        "eth1", "192.0.2.7", "/tmp/s.env", True, 7200, 9999)
    # a flag on the command line wins over the environment
    assert build_parser().parse_args(["--iface", "eth9"]).iface == "eth9"


def test_udp_threads_from_flag_or_environment_and_bad_values_refused(monkeypatch, capsys):
    assert build_parser().parse_args([]).udp_threads == 2
    assert build_parser().parse_args(["--udp-threads", "1"]).udp_threads == 1
    monkeypatch.setenv("NETD_UDP_THREADS", "1")
    assert build_parser().parse_args([]).udp_threads == 1
    for bad_env, argv in (("3", []), ("1", ["--udp-threads", "x"])):
        monkeypatch.setenv("NETD_UDP_THREADS", bad_env)
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        assert "--udp-threads: must be 1 or 2" in capsys.readouterr().err
