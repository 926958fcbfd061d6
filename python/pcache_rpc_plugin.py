"""spdk-rpc plugin for pcache's own JSON-RPC methods.

SPDK's client loads out-of-tree verbs with ``--plugin <module>``::

    PYTHONPATH=/path/to/pcache/python \\
        spdk-rpc --plugin pcache_rpc_plugin bdev_pmem_create /mnt/pmem/cache0 -n Pmem0 --total-size 1024

Every verb of SPDK's own client keeps working with the plugin loaded. A verb the client already
has (SPDK shipped ``bdev_pmem_*`` once) is kept and only gains the options pcache adds, so scripts
written for either go on working.

The module has two halves: client functions (one per method, usable from Python with any SPDK
client object, e.g. ``spdk.rpc.client.JSONRPCClient``), and the command-line verbs built on them,
grouped by module in ``_VERB_GROUPS``.
"""

import json

PMEM_MODES = ("auto", "emulated", "msync")
DEFAULT_PMEM_BLOCK_SIZE = 4096


def _call(client, method, **params):
    """Calls ``method`` with the parameters that are not None (as SPDK's client does)."""
    return client.call(method, {k: v for k, v in params.items() if v is not None})


# Client functions.

def bdev_pmem_create(client, name, pmem_file, block_size=None, num_blocks=None, uuid=None,
                     mode=None):
    """Create a pmem bdev on ``pmem_file``; returns its name.

    A missing file is created at ``num_blocks * block_size`` bytes; an existing one is opened and
    must match the sizes when they are given. ``mode`` is one of PMEM_MODES (default "auto").
    """
    return _call(client, "bdev_pmem_create", name=name, pmem_file=pmem_file,
                 block_size=block_size, num_blocks=num_blocks, uuid=uuid, mode=mode)


def bdev_pmem_delete(client, name):
    """Delete a pmem bdev (the file is kept)."""
    return _call(client, "bdev_pmem_delete", name=name)


# Command line.

def _print_json(value):
    # As SPDK's client prints results: indented JSON, a bare string without its quotes. A dry
    # run (--dry-run) has no result to print.
    if value is not None:
        print(json.dumps(value, indent=2).strip('"'))


def _verb(subparsers, name, help):
    """The client's own parser for ``name`` if it has one, else a new one."""
    existing = subparsers.choices.get(name)
    if existing is not None:
        return existing
    return subparsers.add_parser(name, help=help, description=help)


def _option(parser, *flags, container=None, **kwargs):
    """Adds an argument unless ``parser`` already has one with the same destination; option
    strings it already uses for something else are left out."""
    container = container or parser
    dest = kwargs.get("dest")
    if dest is None:
        longest = max(flags, key=len)
        dest = longest.lstrip("-").replace("-", "_")
    if any(a.dest == dest for a in parser._actions):
        return
    if flags[0].startswith("-"):
        flags = tuple(f for f in flags if f not in parser._option_string_actions)
        if not flags:
            return
        kwargs.setdefault("dest", dest)
    container.add_argument(*flags, **kwargs)


def _pmem_num_blocks(args, block_size):
    num_blocks = getattr(args, "num_blocks", None)
    total_size = getattr(args, "total_size", None)
    if num_blocks is None and total_size is not None:
        num_blocks = int(total_size * 1024 * 1024) // block_size
    return num_blocks


def _add_pmem_verbs(subparsers):
    def create(args):
        block_size = getattr(args, "block_size", None)
        num_blocks = _pmem_num_blocks(args, block_size or DEFAULT_PMEM_BLOCK_SIZE)
        if num_blocks is not None and block_size is None:
            block_size = DEFAULT_PMEM_BLOCK_SIZE
        _print_json(bdev_pmem_create(args.client, name=args.name, pmem_file=args.pmem_file,
                                     block_size=block_size, num_blocks=num_blocks,
                                     uuid=getattr(args, "uuid", None),
                                     mode=getattr(args, "mode", None)))

    p = _verb(subparsers, "bdev_pmem_create",
              "Create a pmem bdev on a DAX file or an emulated pmem file (created if missing)")
    _option(p, "pmem_file", help="Path to the pmem file: on a DAX file system for real pmem, "
            "anywhere (tmpfs, a disk) for emulated pmem")
    _option(p, "-n", "--name", required=True, help="Name of the bdev")
    _option(p, "-u", "--uuid", help="UUID of the bdev (optional)")
    size = p.add_mutually_exclusive_group()
    _option(p, "--total-size", type=float, container=size,
            help="Size in MiB, to create a missing file (an existing file must match)")
    _option(p, "--num-blocks", type=int, container=size,
            help="Size in blocks, to create a missing file (an existing file must match)")
    _option(p, "--block-size", type=int,
            help="Block size in bytes (default %d)" % DEFAULT_PMEM_BLOCK_SIZE)
    _option(p, "-m", "--mode", choices=PMEM_MODES,
            help="How persistence is reached. auto (default): DAX with MAP_SYNC where the file "
            "system allows it, emulated otherwise; emulated: a shared mapping flushed with the "
            "same instructions, survives a process crash but not a power cut; msync: a file on "
            "an ordinary disk, made durable with msync at FLUSH")
    p.set_defaults(func=create)

    def delete(args):
        bdev_pmem_delete(args.client, name=args.name)

    p = _verb(subparsers, "bdev_pmem_delete", "Delete a pmem bdev (its file is kept)")
    _option(p, "name", help="Name of the pmem bdev")
    p.set_defaults(func=delete)


# One entry per pcache module with methods of its own; the cache's bdev_pcache_* verbs join here
# when those methods exist.
_VERB_GROUPS = (
    _add_pmem_verbs,
)


def spdk_rpc_plugin_initialize(subparsers):
    """Entry point spdk-rpc calls with its subcommand parsers."""
    for add_verbs in _VERB_GROUPS:
        add_verbs(subparsers)
