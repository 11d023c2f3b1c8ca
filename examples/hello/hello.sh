#!/bin/sh
# The Quick start's image runs this with busybox as /bin/sh: only shell builtins are at hand.
echo "Hello from an image built by cib."
