#!/usr/bin/env python3
"""Write a repository for the `slipway run` / gitlab-ci-local benchmark.

  gen_run_repo.py a DIR   22 jobs: a build with an artifact, 20 parallel tests, a deploy
  gen_run_repo.py b DIR   200 jobs in a repository of 5,000 files: a prepare job, 20
                          builds, 178 tests (each needing one build), a deploy
  gen_run_repo.py files DIR N   only N source files (the workspace benchmark)

Job scripts check what they were given (artifacts, source files) with shell builtins, so
the figures measure the runners rather than the commands the jobs run, which would cost
the same under both.
"""
import os
import sys


def source_files(root, n):
    # 100 directories of n/100 files, 200 to 2,000 bytes each, all distinct.
    per_dir = max(1, n // 100)
    for i in range(n):
        d = os.path.join(root, "src", f"m{i // per_dir:03d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:04d}.txt"), "w") as f:
            f.write(f"file {i}\n" * (20 + i % 180))


def pipeline_a():
    out = ["stages: [build, test, deploy]", ""]
    out += [
        "build:",
        "  stage: build",
        "  script:",
        "    - mkdir -p dist",
        '    - echo "app $CI_COMMIT_SHORT_SHA" > dist/app.txt',
        "  artifacts:",
        "    paths: [dist/]",
        "",
        "test:",
        "  stage: test",
        "  parallel: 20",
        "  script:",
        '    - read -r name sha < dist/app.txt && [ "$name" = app ]',
        '    - echo "suite $CI_NODE_INDEX of $CI_NODE_TOTAL passed"',
        "",
        "deploy:",
        "  stage: deploy",
        "  script:",
        "    - test -s dist/app.txt",
        '    - echo "deploying $(< dist/app.txt)"',
        "",
    ]
    return "\n".join(out)


def pipeline_b():
    out = ["stages: [prepare, build, test, deploy]", ""]
    out += [
        "prepare:",
        "  stage: prepare",
        "  script:",
        "    - mkdir -p generated",
        '    - echo "config for $CI_COMMIT_REF_NAME" > generated/config.txt',
        "  artifacts:",
        "    paths: [generated/]",
        "",
    ]
    for b in range(20):
        out += [
            f"build-{b:02d}:",
            "  stage: build",
            "  script:",
            "    - test -s generated/config.txt",
            f"    - test -f src/m{b * 5:03d}/f{b * 250:04d}.txt",
            "    - mkdir -p out",
            f'    - echo "build {b} of $CI_COMMIT_SHORT_SHA" > out/build-{b:02d}.txt',
            "  artifacts:",
            "    paths: [out/]",
            "",
        ]
    for t in range(178):
        b = t % 20
        f = (t * 28) % 5000
        out += [
            f"test-{t:03d}:",
            "  stage: test",
            f"  needs: [build-{b:02d}]",
            "  script:",
            f"    - test -s out/build-{b:02d}.txt",
            f"    - test -f src/m{f // 50:03d}/f{f:04d}.txt",
            f'    - echo "test {t} passed"',
            "",
        ]
    out += [
        "deploy:",
        "  stage: deploy",
        "  script:",
        "    - test -s generated/config.txt",
        "    - n=0; for f in out/build-*.txt; do n=$((n+1)); done; [ $n -eq 20 ]",
        '    - echo "deployed $n builds"',
        "",
    ]
    return "\n".join(out)


def main():
    kind, root = sys.argv[1], sys.argv[2]
    os.makedirs(root, exist_ok=True)
    if kind == "a":
        with open(os.path.join(root, "README.md"), "w") as f:
            f.write("benchmark repository\n")
        text = pipeline_a()
    elif kind == "b":
        source_files(root, 5000)
        text = pipeline_b()
    elif kind == "files":
        source_files(root, int(sys.argv[3]))
        return
    else:
        sys.exit(f"unknown kind {kind}")
    with open(os.path.join(root, ".gitlab-ci.yml"), "w") as f:
        f.write(text)


main()
