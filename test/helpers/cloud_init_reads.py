"""How Debian's cloud-init reads a NoCloud seed directory, as JSON on stdout.

Usage: python3 cloud_init_reads.py SEED_DIR WORK_DIR   (cloud-init's package on PYTHONPATH)

Runs cloud-init's own code, not a model of it: the NoCloud datasource reads SEED_DIR the way it
reads a mounted CIDATA disk; stages.Init consumes user-data and vendor-data with the default
part handlers (cloud-config, shell scripts, boot hooks, jinja) into WORK_DIR; the merged config
is what the config modules see; the network-config is parsed into a NetworkState and rendered
by the eni, networkd and netplan renderers, and extract_physdevs gives the renames cloud-init
applies to the running NICs.
"""
import base64
import copy
import json
import logging
import os
import sys

import cloudinit
from cloudinit import helpers, settings, stages, util
from cloudinit.net import extract_physdevs, network_state
from cloudinit.net import eni, netplan, networkd
from cloudinit.sources import DataSourceNoCloud


def files_under(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read().decode("utf-8", "replace")
    return out


def main():
    seed, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    logs = []

    class Keep(logging.Handler):
        def emit(self, record):
            logs.append([record.levelname, record.getMessage()])

    logging.getLogger().addHandler(Keep(level=logging.WARNING))
    logging.getLogger().setLevel(logging.DEBUG)

    # Debian's /etc/cloud/cloud.cfg from the same package, over cloud-init's built-in defaults,
    # with paths moved into WORK_DIR and no device scan (the seed is a directory here).
    package_root = os.path.join(os.path.dirname(cloudinit.__file__), *[".."] * 4)
    debian_cfg = util.read_conf(os.path.join(package_root, "etc/cloud/cloud.cfg"))
    local = {
        "system_info": {
            "distro": "debian",
            "paths": {
                "cloud_dir": os.path.join(work, "cloud"),
                "run_dir": os.path.join(work, "run"),
                "templates_dir": os.path.join(work, "templates"),
            },
        },
        "datasource": {"NoCloud": {"fs_label": None}},
    }
    cfg = util.mergemanydict([local, debian_cfg, settings.CFG_BUILTIN])
    init = stages.Init(ds_deps=[])
    # The host's /etc/cloud is not the guest's: cloud-init sees only this config.
    def read_cfg(extra_fns=None):
        if init._cfg is None:
            init._cfg = copy.deepcopy(cfg)

    init.read_cfg = read_cfg
    init.initialize()
    ds = DataSourceNoCloud.DataSourceNoCloud(cfg, init.distro, init.paths)
    ds.seed_dirs = [seed]
    found = ds.get_data()
    out = {"found": bool(found), "logs": logs}
    if not found:
        print(json.dumps(out))
        return
    init.datasource = ds
    init._paths = None
    init.instancify()
    init.update()
    init.consume_data()
    merged = helpers.ConfigMerger(
        paths=init.paths, datasource=ds, base_cfg={}
    ).cfg
    out.update(
        {
            "seed": ds.seed,
            "instance_id": ds.get_instance_id(),
            "hostname": ds.get_hostname().hostname,
            "metadata": ds.metadata,
            "cloud_config": merged,
            "instance_files": files_under(
                os.path.join(work, "cloud", "instances", ds.get_instance_id())
            ),
            "vendordata_raw": base64.b64encode(
                ds.vendordata_raw or b""
            ).decode(),
        }
    )
    netcfg = ds.network_config
    if netcfg is not None:
        state = network_state.parse_net_config_data(netcfg)
        rendered = {}
        for name, renderer in (
            ("eni", eni.Renderer({})),
            ("networkd", networkd.Renderer({})),
            ("netplan", netplan.Renderer({"postcmds": False})),
        ):
            target = os.path.join(work, "render-" + name)
            renderer.render_network_state(state, target=target)
            rendered[name] = files_under(target)
        out["network"] = {
            "renames": [list(p) for p in extract_physdevs(netcfg)],
            "interfaces": [
                {
                    "name": i.get("name"),
                    "mac_address": i.get("mac_address"),
                    "subnets": i.get("subnets"),
                }
                for i in state.iter_interfaces()
            ],
            "rendered": rendered,
        }
    print(json.dumps(out, default=str))


main()
