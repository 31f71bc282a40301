"""netd's flags: flannel's names, typed values, NETD_<FLAG> environment fallbacks refused by name when bad."""

import pytest

from netd.cli.agent_main import build_parser
from netd.cli.netctl_main import build_parser as netctl_parser
from netd.model.flags import (
    env_name,
    parse_bool,
    parse_duration,
    parse_endpoints,
    parse_ip,
    parse_ipv4,
    parse_log_level,
    parse_port,
    parse_seconds,
)


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("30m", 1800), ("90s", 90), ("45", 45), ("1.5h", 5400),
                                          (" 2m ", 120), ("1", 1), ("1s", 1)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "h", "0", "0s", "0.5", "-5m", "nanh", "infs", "10d", "1e400"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match=f"expected a duration of at least 1s such as 24h.*found {text!r}"):
        parse_duration(text)


@pytest.mark.parametrize("text,value", [("1", True), ("true", True), ("TRUE", True), ("Yes", True), ("on", True),
                                        ("0", False), ("false", False), ("No", False), ("off", False),
                                        (" true ", True)])
def test_booleans_accept_the_usual_spellings(text, value):
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["enabled", "disabled", "2", "", "y", "tru", "nope"])
def test_booleans_refuse_the_rest(text):
    with pytest.raises(ValueError, match=f"expected one of 1/true/yes/on or 0/false/no/off, found {text!r}"):
        parse_bool(text)


@pytest.mark.parametrize("text,value", [("0", 0), ("1", 1), ("9180", 9180), ("65535", 65535), (" 80 ", 80)])
def test_ports(text, value):
    assert parse_port(text) == value


@pytest.mark.parametrize("text", ["abc", "-1", "65536", "", "1.5", "0x50"])
def test_bad_ports(text):
    with pytest.raises(ValueError, match=f"expected a port number 0..65535, found {text!r}"):
        parse_port(text)


@pytest.mark.parametrize("text,value", [("5", 5.0), ("0.25", 0.25), ("1e-2", 0.01), ("0.01", 0.01)])
def test_seconds(text, value):
    assert parse_seconds(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "inf", "", "0.009", "1e-9"])
def test_bad_seconds(text):
    with pytest.raises(ValueError, match=f"expected a number of seconds of at least 0.01, found {text!r}"):
        parse_seconds(text)


def test_durations_stop_at_etcds_longest_lease():
    assert parse_duration("9000000000") == 9_000_000_000
    for text in ("9000000001", "2500001h", "1e30s"):
        with pytest.raises(ValueError, match=f"expected at most 9000000000s .etcd's longest lease., found {text!r}"):
            parse_duration(text)


def test_addresses_and_levels():
    assert parse_ipv4(" 192.0.2.7") == "192.0.2.7"
    assert parse_ip("::1") == "::1" and parse_ip("0.0.0.0") == "0.0.0.0"
    for bad in ("::1", "192.0.2.256", "host"):
        with pytest.raises(ValueError, match=f"expected an IPv4 address, found {bad!r}"):
            parse_ipv4(bad)
    with pytest.raises(ValueError, match="expected an IP address, found 'x'"):
        parse_ip("x")
    assert parse_log_level("DEBUG") == "debug" and parse_log_level("warning") == "warning"
    with pytest.raises(ValueError, match="expected one of debug, info, warning, error, critical, found 'loud'"):
        parse_log_level("loud")


def test_endpoints():
    assert parse_endpoints("http://10.0.0.1:2379, https://etcd.example:4001,") == [
        ("10.0.0.1", 2379, False), ("etcd.example", 4001, True)]
    assert parse_endpoints("127.0.0.1") == [("127.0.0.1", 2379, False)]
    for bad, msg in (("ftp://x:1", "expected http"), ("http://x:99999", "bad port"), (" , ", "at least one")):
        with pytest.raises(ValueError, match=msg):
            parse_endpoints(bad)


def test_env_names():
    assert env_name("--etcd-endpoints") == "NETD_ETCD_ENDPOINTS"
    assert env_name("--ip-masq") == "NETD_IP_MASQ"


def test_defaults_are_flannels(monkeypatch):
    for var in [v for v in list(__import__("os").environ) if v.startswith("NETD_")]:
        monkeypatch.delenv(var)
    args = build_parser().parse_args([])
    assert args.etcd_endpoints == "http://127.0.0.1:2379"
    assert args.etcd_prefix == "/coreos.com/network"
    assert args.subnet_file == "/run/flannel/subnet.env"
    assert args.subnet_lease_ttl == 86400
    assert args.ip_masq is False
    assert (args.healthz_port, args.resync_interval, args.udp_threads, args.log_level) == (0, 5.0, 2, "info")


def test_every_flag_reads_netd_environment(monkeypatch):
    env = {
        "NETD_ETCD_ENDPOINTS": "http://10.0.0.1:2379",
        "NETD_ETCD_PREFIX": "/x/network",
        "NETD_ETCD_CAFILE": "/ca", "NETD_ETCD_CERTFILE": "/c", "NETD_ETCD_KEYFILE": "/k",
        "NETD_IFACE": "eth1", "NETD_PUBLIC_IP": "192.0.2.7", "NETD_SUBNET_FILE": "/tmp/s.env",
        "NETD_IP_MASQ": "yes", "NETD_SUBNET_LEASE_TTL": "2h", "NETD_HEALTHZ_PORT": "9999",
        "NETD_HEALTHZ_IP": "127.0.0.1", "NETD_RESYNC_INTERVAL": "0.5", "NETD_UDP_OFFLOADS": "off",
        "NETD_UDP_THREADS": "1", "NETD_STATE_DIR": "/tmp/st", "NETD_LOG_FORMAT": "json", "NETD_LOG_LEVEL": "DEBUG",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    a = build_parser().parse_args([])
    assert (a.etcd_endpoints, a.etcd_prefix, a.etcd_cafile, a.etcd_certfile, a.etcd_keyfile) == (
        "http://10.0.0.1:2379", "/x/network", "/ca", "/c", "/k")
    assert (a.iface, a.public_ip, a.subnet_file, a.ip_masq, a.subnet_lease_ttl, a.healthz_port) == (
        "eth1", "192.0.2.7", "/tmp/s.env", True, 7200, 9999)
    assert (a.healthz_ip, a.resync_interval, a.udp_offloads, a.udp_threads, a.state_dir, a.log_format,
            a.log_level) == ("127.0.0.1", 0.5, "off", 1, "/tmp/st", "json", "debug")
    # a flag on the command line wins over the environment, even when it says the default
    b = build_parser().parse_args(["--iface", "eth9", "--udp-threads", "2", "--healthz-port", "0"])
    assert (b.iface, b.udp_threads, b.healthz_port) == ("eth9", 2, 0)
    # an empty variable is unset
    monkeypatch.setenv("NETD_HEALTHZ_PORT", "")
    monkeypatch.setenv("NETD_IP_MASQ", "")
    c = build_parser().parse_args([])
    assert (c.healthz_port, c.ip_masq) == (0, False)
    monkeypatch.setenv("NETD_IP_MASQ", "off")
    assert build_parser().parse_args([]).ip_masq is False
    assert build_parser().parse_args(["--ip-masq"]).ip_masq is True
    # as flannel's own docs and unit files spell it, with a value; the command line still wins
    assert build_parser().parse_args(["--ip-masq=true"]).ip_masq is True
    monkeypatch.setenv("NETD_IP_MASQ", "on")
    assert build_parser().parse_args(["--ip-masq=false"]).ip_masq is False
    assert build_parser().parse_args(["--ip-masq", "--iface", "eth0"]).ip_masq is True


def test_a_bad_ip_masq_value_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--ip-masq=enabled"])
    assert exc.value.code == 2
    assert "--ip-masq: expected one of 1/true/yes/on or 0/false/no/off" in capsys.readouterr().err


@pytest.mark.parametrize("var,value,message", [
    ("NETD_HEALTHZ_PORT", "abc", "NETD_HEALTHZ_PORT='abc': expected a port number 0..65535"),
    ("NETD_HEALTHZ_PORT", "70000", "NETD_HEALTHZ_PORT='70000': expected a port number"),
    ("NETD_IP_MASQ", "enabled", "NETD_IP_MASQ='enabled': expected one of 1/true/yes/on or 0/false/no/off"),
    ("NETD_UDP_THREADS", "3", "NETD_UDP_THREADS='3': expected one of 2, 1"),
    ("NETD_UDP_THREADS", "x", "NETD_UDP_THREADS='x': invalid literal"),
    ("NETD_UDP_OFFLOADS", "on", "NETD_UDP_OFFLOADS='on': expected one of auto, off"),
    ("NETD_SUBNET_LEASE_TTL", "0", "NETD_SUBNET_LEASE_TTL='0': expected a duration of at least 1s"),
    ("NETD_RESYNC_INTERVAL", "fast", "NETD_RESYNC_INTERVAL='fast': expected a number of seconds of at least"),
    ("NETD_PUBLIC_IP", "10.0.0", "NETD_PUBLIC_IP='10.0.0': expected an IPv4 address"),
    ("NETD_LOG_LEVEL", "verbose", "NETD_LOG_LEVEL='verbose': expected one of debug, info"),
    ("NETD_LOG_FORMAT", "xml", "NETD_LOG_FORMAT='xml': expected one of text, json"),
    ("NETD_ETCD_ENDPOINTS", "ftp://x", "NETD_ETCD_ENDPOINTS='ftp://x': expected http(s)://host:port"),
])
def test_a_bad_variable_is_refused_at_start_naming_it(monkeypatch, capsys, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--healthz-port", "abc"], "argument --healthz-port: expected a port number 0..65535, found 'abc'"),
    (["--udp-threads", "3"], "argument --udp-threads: invalid choice: 3"),
    (["--subnet-lease-ttl", "soon"], "argument --subnet-lease-ttl: expected a duration"),
])
def test_a_bad_flag_is_refused_naming_it(capsys, argv, message):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_netctl_reads_the_etcd_variables_and_refuses_bad_ones(monkeypatch, capsys):
    monkeypatch.setenv("NETD_ETCD_ENDPOINTS", "http://10.9.9.9:2379")
    monkeypatch.setenv("NETD_STATS_URL", "http://h:1/metrics")
    assert netctl_parser().parse_args(["leases"]).etcd_endpoints == "http://10.9.9.9:2379"
    assert netctl_parser().parse_args(["stats"]).url == "http://h:1/metrics"
    monkeypatch.setenv("NETD_OUTPUT", "json")  # only the flags documented as variables read one
    assert netctl_parser().parse_args(["leases"]).output == "table"
    monkeypatch.setenv("NETD_ETCD_ENDPOINTS", "gopher://x")
    with pytest.raises(SystemExit):
        netctl_parser().parse_args(["leases"])
    assert "NETD_ETCD_ENDPOINTS='gopher://x'" in capsys.readouterr().err


def test_help_shows_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "(default /run/flannel/subnet.env)" in " ".join(out.split()) and "object at 0x" not in out
