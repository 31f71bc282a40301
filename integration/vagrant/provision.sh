#!/bin/sh
# Runs on each VM (as root) when Vagrant provisions it: installs netd offline from the wheels
# copied in, the systemd unit and its EnvironmentFile; node 1 also runs etcd and sets the config.
set -eu
INDEX=$1 ETCD_IP=$2 BACKEND=$3 MY_IP=$4

# The underlay address and the hostname, made persistent here (unless Vagrant's guest plugin already
# wrote them): a VM restarted by `vagrant reload` must come back with both, untouched by anyone.
hostnamectl set-hostname "node$INDEX" 2>/dev/null || echo "node$INDEX" > /etc/hostname
hostname "node$INDEX"
grep -q "node$INDEX" /etc/hosts || echo "127.0.1.1 node$INDEX" >> /etc/hosts
if ! grep -q "eth1" /etc/network/interfaces /etc/network/interfaces.d/* 2>/dev/null; then
    cat > /etc/network/interfaces.d/eth1 <<IFACE
auto eth1
iface eth1 inet static
    address $MY_IP/24
IFACE
fi
ip -4 addr show dev eth1 | grep -q "$MY_IP/" || ifup eth1

if [ ! -x /opt/netd/bin/netd ] || [ -n "$(find /tmp/netd-wheels -newer /opt/netd/bin/netd -name 'netd-*.whl')" ]; then
    [ -d /opt/netd ] || python3 -m venv /opt/netd
    /opt/netd/bin/pip install -q --no-index --find-links /tmp/netd-wheels --force-reinstall --no-deps \
        /tmp/netd-wheels/netd-*.whl
    /opt/netd/bin/pip install -q --no-index --find-links /tmp/netd-wheels netd
fi
ln -sf /opt/netd/bin/netctl /usr/local/bin/netctl

if [ "$INDEX" = 1 ]; then
    cat > /etc/default/etcd <<ETCD
ETCD_NAME=node1
ETCD_DATA_DIR=/var/lib/etcd/netd
ETCD_LISTEN_CLIENT_URLS=http://$ETCD_IP:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$ETCD_IP:2379
ETCD_LISTEN_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:2380
ETCD_INITIAL_CLUSTER=node1=http://127.0.0.1:2380
ETCD_HEARTBEAT_INTERVAL=100
ETCD_ELECTION_TIMEOUT=1000
ETCD
    systemctl enable etcd >/dev/null 2>&1
    systemctl restart etcd
    for _ in $(seq 1 60); do
        ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break
        sleep 1
    done
    netctl --etcd-endpoints=http://127.0.0.1:2379 config set --network 10.5.0.0/16 --backend "$BACKEND"
fi

install -d /etc/netd
sed -e "s|^NETD_ETCD_ENDPOINTS=.*|NETD_ETCD_ENDPOINTS=http://$ETCD_IP:2379|" \
    -e "s|^# NETD_IFACE=.*|NETD_IFACE=eth1|" -e "s|^# NETD_OVS_BRIDGE=.*|NETD_OVS_BRIDGE=netd-int|" \
    -e "s|^# NETD_OVS_DATAPATH=.*|NETD_OVS_DATAPATH=system|" /tmp/netd-contrib/netd.env > /etc/netd/netd.env
# tenant networks: the box's Open vSwitch, kernel datapath (the openvswitch module of Debian's kernel)
systemctl enable --now openvswitch-switch >/dev/null 2>&1
install -m644 /tmp/netd-contrib/netd.service /etc/systemd/system/netd.service
systemctl daemon-reload
systemctl enable netd >/dev/null 2>&1
systemctl restart netd
echo "provisioned node$INDEX ($MY_IP), netd $(/opt/netd/bin/netd --version)"
