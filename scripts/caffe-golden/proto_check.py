#!/usr/bin/env python3
"""Checks proto/caffe.proto against a real Caffe's compiled schema: every
field number and enum value we declare must be Caffe's (pycaffe's
caffe_pb2 descriptors). Run by crosscheck.sh inside the chroot, with our
proto copied to /tmp/ours.proto."""
import re
from caffe.proto import caffe_pb2 as p
text = open("/tmp/ours.proto").read()
text = re.sub(r"//.*", "", text)
stack, problems, n = [], [], 0
for tok in re.finditer(r"(message|enum)\s+(\w+)\s*\{|\}|(optional|repeated|required)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)|(\w+)\s*=\s*(-?\d+)\s*;", text):
    if tok.group(1):
        stack.append((tok.group(1), tok.group(2)))
    elif tok.group(0) == "}":
        stack.pop()
    elif tok.group(3):
        path = [s[1] for s in stack]
        d = p
        try:
            for part in path:
                d = getattr(d, part)
            f = d.DESCRIPTOR.fields_by_name.get(tok.group(5))
        except AttributeError:
            problems.append(f"no message {'.'.join(path)} in Caffe"); continue
        n += 1
        if f is None:
            problems.append(f"{'.'.join(path)}.{tok.group(5)}: not in Caffe")
        elif f.number != int(tok.group(6)):
            problems.append(f"{'.'.join(path)}.{tok.group(5)}: ours {tok.group(6)}, Caffe {f.number}")
    elif tok.group(7) and stack and stack[-1][0] == "enum":
        path = [s[1] for s in stack]
        d = p
        try:
            for part in path[:-1]:
                d = getattr(d, part)
            e = d.DESCRIPTOR.enum_types_by_name[path[-1]]
            v = e.values_by_name.get(tok.group(7))
            n += 1
            if v is None or v.number != int(tok.group(8)):
                problems.append(f"enum {'.'.join(path)}.{tok.group(7)}: ours {tok.group(8)}, Caffe {v.number if v else None}")
        except (AttributeError, KeyError):
            problems.append(f"no enum {'.'.join(path)} in Caffe")
print(n, "fields and enum values checked")
print("\n".join(problems) or "all agree with Caffe")
