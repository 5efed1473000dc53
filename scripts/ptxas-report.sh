#!/bin/sh
# Compiler launcher for the CUDA target: runs the compile, appending its ptxas -v output
# (registers, shared memory, spills per kernel) to the report file, and passing it through.
report=$1; shift
"$@" 2> "$report.part.$$"
rc=$?
cat "$report.part.$$" >&2
grep -E "ptxas|Compiling entry|Function properties|spill|Used [0-9]+ registers" "$report.part.$$" >> "$report"
rm -f "$report.part.$$"
exit $rc
