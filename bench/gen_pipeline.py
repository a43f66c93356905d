#!/usr/bin/env python3
"""Write a generated GitLab CI pipeline of N jobs that uses what real large pipelines use:
anchors and merge keys, hidden templates with multi-level `extends`, `!reference`, rules
with expressions, parallel jobs and `needs` across stages.

usage: gen_pipeline.py N OUT_FILE
"""
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
out = sys.argv[2] if len(sys.argv) > 2 else ".gitlab-ci.yml"
stages = ["build", "test", "package", "deploy"]
lines = []
w = lines.append
w("stages: [" + ", ".join(stages) + "]")
w("variables:")
w("  GLOBAL_FLAG: \"on\"")
w("  IMAGE_TAG: $CI_COMMIT_SHORT_SHA")
w(".defaults: &defaults")
w("  retry: 1")
w("  interruptible: true")
w("  tags: [linux]")
w(".setup:")
w("  before_script:")
w("    - echo setup")
w("    - export PATH=$PATH:/opt/bin")
for t in range(10):
    w(f".base-{t}:")
    w("  <<: *defaults")
    w(f"  variables: {{ TEMPLATE: \"t{t}\" }}")
    w("  before_script:")
    w("    - !reference [.setup, before_script]")
    w(f"    - echo template {t}")
    w(f".tmpl-{t}:")
    w(f"  extends: .base-{t}")
    w("  rules:")
    w("    - if: $CI_PIPELINE_SOURCE == \"schedule\" && $NIGHTLY == \"false\"")
    w("      when: never")
    w(f"    - if: $CI_COMMIT_BRANCH =~ /^(main|release\\/.*)$/ || $FORCE_{t}")
    w("    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"")
    w("      when: manual")
per_stage = n // len(stages)
names = {s: [] for s in stages}
count = 0
for si, stage in enumerate(stages):
    k = per_stage if si < len(stages) - 1 else n - count
    for i in range(k):
        name = f"{stage}-{i:04d}"
        w(f"{name}:")
        w(f"  extends: .tmpl-{i % 10}")
        w(f"  stage: {stage}")
        w("  script:")
        w(f"    - echo {name}")
        w("    - make " + stage)
        if si > 0 and names[stages[si - 1]]:
            prev = names[stages[si - 1]]
            w("  needs: [" + ", ".join(prev[(i + d) % len(prev)] for d in range(3)) + "]")
        if stage == "build":
            w("  artifacts: { paths: [dist/] }")
        names[stage].append(name)
        count += 1
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
