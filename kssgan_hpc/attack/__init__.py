"""The attacker's side, shared by the release gate, checkpoint selection and the report.

attackers.py and recognizers.py re-identify de-identified faces, cues.py what they carry beyond
their cluster (pose, labels); measures.py and kid.py measure them; population.py splits people into
an attacker's gallery and the probes; heldout.py is the gate's measurement of a de-identification
on held-out people, with its pass rule.
"""
