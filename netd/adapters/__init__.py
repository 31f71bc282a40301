"""The only code with side effects: etcd, memory fake, netlink, nftables, files, HTTP."""
