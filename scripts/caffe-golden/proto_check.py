#!/usr/bin/env python3
"""Checks proto/caffe.proto against a real Caffe's compiled schema (pycaffe's
caffe_pb2 descriptors): every field we declare must exist in Caffe with the
same number and the same default (a wrong default silently changes every
net that leaves the field out), and every enum value must be Caffe's. Run
by crosscheck.sh inside the chroot, with our proto copied to
/tmp/ours.proto."""
import re

from caffe.proto import caffe_pb2 as p
from google.protobuf.descriptor import FieldDescriptor as FD

FIELD = re.compile(r"(optional|repeated|required)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*(?:\[([^\]]*)\])?\s*;")
TOKENS = re.compile(r"(message|enum)\s+(\w+)\s*\{|\}|" + FIELD.pattern + r"|(\w+)\s*=\s*(-?\d+)\s*;")


def lookup(path):
    d = p
    for part in path:
        d = getattr(d, part)
    return d


def default_problem(f, options):
    """What is wrong with our `[default = ...]` for Caffe's field f."""
    m = re.search(r"default\s*=\s*(\"[^\"]*\"|[^,\]\s]+)", options or "")
    ours = m.group(1) if m else None
    if ours is None:
        return None if not f.has_default_value else f"no default, Caffe {f.default_value!r}"
    if not f.has_default_value:
        return f"default {ours}, Caffe none"
    want = f.default_value
    if f.type == FD.TYPE_ENUM:
        value = f.enum_type.values_by_name.get(ours)
        return None if value and value.number == want else f"default {ours}, Caffe {want}"
    if f.type == FD.TYPE_BOOL:
        return None if (ours == "true") == want else f"default {ours}, Caffe {want}"
    if f.type == FD.TYPE_STRING:
        return None if ours.strip('"') == want else f"default {ours}, Caffe {want!r}"
    if f.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        got = float(ours)
        return None if abs(got - want) <= 1e-6 * max(abs(want), 1e-30) else f"default {ours}, Caffe {want}"
    return None if int(ours) == want else f"default {ours}, Caffe {want}"


def main():
    text = re.sub(r"//.*", "", open("/tmp/ours.proto").read())
    stack, problems, fields, values, defaults = [], [], 0, 0, 0
    for tok in TOKENS.finditer(text):
        if tok.group(1):
            stack.append((tok.group(1), tok.group(2)))
        elif tok.group(0) == "}":
            stack.pop()
        elif tok.group(3):
            path = [s[1] for s in stack]
            name, number, options = tok.group(5), int(tok.group(6)), tok.group(7)
            where = ".".join(path + [name])
            try:
                f = lookup(path).DESCRIPTOR.fields_by_name.get(name)
            except AttributeError:
                problems.append(f"no message {'.'.join(path)} in Caffe")
                continue
            fields += 1
            if f is None:
                problems.append(f"{where}: not in Caffe")
                continue
            if f.number != number:
                problems.append(f"{where}: number {number}, Caffe {f.number}")
            if f.has_default_value or (options and "default" in options):
                defaults += 1
            why = default_problem(f, options)
            if why:
                problems.append(f"{where}: {why}")
        elif tok.group(8) and stack and stack[-1][0] == "enum":
            path = [s[1] for s in stack]
            try:
                e = lookup(path[:-1]).DESCRIPTOR.enum_types_by_name[path[-1]]
            except (AttributeError, KeyError):
                problems.append(f"no enum {'.'.join(path)} in Caffe")
                continue
            values += 1
            v = e.values_by_name.get(tok.group(8))
            if v is None or v.number != int(tok.group(9)):
                problems.append(f"enum {'.'.join(path)}.{tok.group(8)}: {tok.group(9)}, "
                                f"Caffe {v.number if v else None}")
    print(f"proto: {fields} fields ({defaults} with defaults) and {values} enum values checked")
    print("\n".join(problems) or "proto: all agree with Caffe")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
