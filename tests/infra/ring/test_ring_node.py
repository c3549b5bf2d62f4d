testinfra_hosts = ["ansible://ring"]


def test_ring_node_passes_to_its_successor_in_group_order(host, hostvars):
    ring = hostvars["groups"]["ring"]
    me = hostvars["inventory_hostname"]
    successor = ring[(ring.index(me) + 1) % len(ring)]
    cmdline = host.check_output("cat /proc/$(supervisorctl pid labnodes-ring)/cmdline | tr '\\0' ' '")
    assert f"--name {me} " in cmdline + " " and f"--next {successor}" in cmdline


def test_ring_node_listens_on_its_cluster_address(host, hostvars):
    listening = host.check_output("ss -ltnH")
    assert f"{hostvars['ansible_host']}:" in listening
