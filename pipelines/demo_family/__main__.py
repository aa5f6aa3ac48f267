"""python -m pipelines.demo_family [ROOT]: build the demo family and list its folders."""

import sys

from pipelines.demo_family.family import main

main(sys.argv[1:])
