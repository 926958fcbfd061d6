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


CACHE_MODES = ("writeback", "writethrough", "writearound", "passthrough")


def bdev_pcache_create(client, name, cache_bdev, origin_bdev, mode=None, data_crc=None,
                       gc_percent=None, format=None, force=None, durable=None,
                       segment_size=None, uuid=None, promotion_threshold=None,
                       sequential_cutoff=None, writeback_dirty_target=None,
                       writeback_rate_limit=None):
    """Create a pcache bdev: ``cache_bdev`` (a pmem bdev) in front of ``origin_bdev``.

    An existing cache for the same origin is reattached (its log replayed, dirty data kept);
    ``format`` reformats it (its data is lost); over dirty data held for another origin it is
    refused unless ``force`` is given too. Returns the new bdev's name.
    """
    return _call(client, "bdev_pcache_create", name=name, cache_bdev=cache_bdev,
                 origin_bdev=origin_bdev, mode=mode, data_crc=data_crc, gc_percent=gc_percent,
                 format=format, force=force, durable=durable, segment_size=segment_size,
                 uuid=uuid,
                 promotion_threshold=promotion_threshold, sequential_cutoff=sequential_cutoff,
                 writeback_dirty_target=writeback_dirty_target,
                 writeback_rate_limit=writeback_rate_limit)


def bdev_pcache_delete(client, name):
    """Delete a pcache bdev cleanly: everything sealed, dirty data kept in pmem for next time."""
    return _call(client, "bdev_pcache_delete", name=name)


def bdev_pcache_get_stats(client, name):
    """Counters, occupancy and log positions of a pcache bdev."""
    return _call(client, "bdev_pcache_get_stats", name=name)


def bdev_pcache_reset_stats(client, name):
    """Set a pcache bdev's counters back to 0."""
    return _call(client, "bdev_pcache_reset_stats", name=name)


def bdev_pcache_set_options(client, name, mode=None, gc_percent=None, promotion_threshold=None,
                            sequential_cutoff=None, writeback_dirty_target=None,
                            writeback_rate_limit=None):
    """Change a pcache bdev's mode or tunables at runtime; options not given stay.

    Leaving writeback starts a flush: the other modes write around the cache.
    """
    return _call(client, "bdev_pcache_set_options", name=name, mode=mode, gc_percent=gc_percent,
                 promotion_threshold=promotion_threshold, sequential_cutoff=sequential_cutoff,
                 writeback_dirty_target=writeback_dirty_target,
                 writeback_rate_limit=writeback_rate_limit)


def bdev_pcache_flush_start(client, name):
    """Start writing every dirty byte back to the origin."""
    return _call(client, "bdev_pcache_flush_start", name=name)


def bdev_pcache_flush_status(client, name):
    """Progress of writeback: in_progress, dirty_bytes, written_back_seq, target_seq."""
    return _call(client, "bdev_pcache_flush_status", name=name)


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


def _add_tunables(p):
    """The options bdev_pcache_create and bdev_pcache_set_options share."""
    _option(p, "--promotion-threshold", type=int,
            help="Cache a read miss after this many misses (0 or 1: always)")
    _option(p, "--sequential-cutoff", type=int,
            help="Streams longer than this many bytes bypass the cache (0: off)")
    _option(p, "--writeback-dirty-target", type=int,
            help="Write back slowly while dirty data stays under this percent of the cache")
    _option(p, "--writeback-rate-limit", type=int,
            help="Upper bound for writeback in bytes per second (0: unlimited)")


def _add_pcache_verbs(subparsers):
    def create(args):
        _print_json(bdev_pcache_create(
            args.client, name=args.name, cache_bdev=args.cache_bdev,
            origin_bdev=args.origin_bdev, mode=args.mode,
            data_crc=True if args.data_crc else None, gc_percent=args.gc_percent,
            format=True if args.format else None, force=True if args.force else None,
            durable=True if args.durable else None,
            segment_size=args.segment_size, uuid=args.uuid,
            promotion_threshold=args.promotion_threshold,
            sequential_cutoff=args.sequential_cutoff,
            writeback_dirty_target=args.writeback_dirty_target,
            writeback_rate_limit=args.writeback_rate_limit))

    p = _verb(subparsers, "bdev_pcache_create",
              "Create a pcache bdev: a pmem write-back cache in front of an origin bdev")
    _option(p, "-b", "--name", required=True, help="Name of the new pcache bdev")
    _option(p, "-c", "--cache-bdev", required=True, help="The pmem bdev holding the cache")
    _option(p, "-o", "--origin-bdev", required=True, help="The bdev being cached")
    _option(p, "-m", "--mode", choices=CACHE_MODES, help="Cache mode (default writeback)")
    _option(p, "--data-crc", action="store_true",
            help="Keep a crc32c of all cached data and check it on every read")
    _option(p, "-g", "--gc-percent", type=int,
            help="Reclaim segments once this percent is in use (0-90, default 70)")
    _option(p, "--format", action="store_true",
            help="Reformat the cache even if it holds a cache for another origin (data lost)")
    _option(p, "--force", action="store_true",
            help="With --format: format even over dirty data held for another origin (lost)")
    _option(p, "--durable", action="store_true",
            help="Every completed write is already persistent (group commit per poll)")
    _option(p, "--segment-size", type=int,
            help="Segment size in bytes when formatting (power of two, 1 MiB to 1 GiB)")
    _option(p, "-u", "--uuid", help="UUID of the new bdev (optional)")
    _add_tunables(p)
    p.set_defaults(func=create)

    def set_options(args):
        bdev_pcache_set_options(
            args.client, name=args.name, mode=args.mode, gc_percent=args.gc_percent,
            promotion_threshold=args.promotion_threshold,
            sequential_cutoff=args.sequential_cutoff,
            writeback_dirty_target=args.writeback_dirty_target,
            writeback_rate_limit=args.writeback_rate_limit)

    p = _verb(subparsers, "bdev_pcache_set_options",
              "Change a pcache bdev's mode or tunables at runtime (options not given stay)")
    _option(p, "name", help="Name of the pcache bdev")
    _option(p, "-m", "--mode", choices=CACHE_MODES,
            help="Cache mode (leaving writeback starts writing dirty data back)")
    _option(p, "-g", "--gc-percent", type=int, help="Reclaim segments past this percent (0-90)")
    _add_tunables(p)
    p.set_defaults(func=set_options)

    for verb, fn, help, prints in (
        ("bdev_pcache_delete", bdev_pcache_delete,
         "Delete a pcache bdev cleanly (dirty data stays in pmem for the next create)", False),
        ("bdev_pcache_get_stats", bdev_pcache_get_stats,
         "Show a pcache bdev's counters, occupancy and log positions", True),
        ("bdev_pcache_reset_stats", bdev_pcache_reset_stats,
         "Set a pcache bdev's counters back to 0", False),
        ("bdev_pcache_flush_start", bdev_pcache_flush_start,
         "Start writing every dirty byte back to the origin", True),
        ("bdev_pcache_flush_status", bdev_pcache_flush_status,
         "Show writeback progress (in_progress, dirty_bytes, ...)", True),
    ):
        p = _verb(subparsers, verb, help)
        _option(p, "name", help="Name of the pcache bdev")

        def run(args, fn=fn, prints=prints):
            result = fn(args.client, name=args.name)
            if prints:
                _print_json(result)

        p.set_defaults(func=run)


# One entry per pcache module with methods of its own.
_VERB_GROUPS = (
    _add_pmem_verbs,
    _add_pcache_verbs,
)


def spdk_rpc_plugin_initialize(subparsers):
    """Entry point spdk-rpc calls with its subcommand parsers."""
    for add_verbs in _VERB_GROUPS:
        add_verbs(subparsers)
