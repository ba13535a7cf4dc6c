"""Version of Infernetes and of the Elasticsearch REST API it speaks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("infernetes")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

# What GET / reports as version.number: the Elasticsearch release whose inference API we follow.
ES_COMPAT_VERSION = "9.1.0"
