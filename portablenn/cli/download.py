"""portablenn download: fetch a dataset (MNIST) into the cache or --data-dir."""


def add_parser(commands):
    dl = commands.add_parser("download", help="download a dataset into the cache (MNIST)")
    dl.add_argument("name", choices=["mnist"])
    dl.add_argument("--data-dir", help="target directory (default: $PORTABLENN_DATA or the cache)")
    return dl


def run(args):
    from ..datasets.download import download_mnist

    print(f"MNIST is in {download_mnist(args.data_dir)}")
    return 0
