# syntax=docker/dockerfile:1.7
# Lodger's one image: every binary, plus the self-contained /opt/lodger bundle (lodger-shim +
# CRIU 4.x + the libraries both need) that workload pods copy in with an init container.
# See docs/contracts.md ("The Lodger image and the tools bundle").
#
#   docker build -t lodger:dev .
#
# Stages: build (Rust, --locked, cache mounts) -> bundle (CRIU from scripts/install-criu.sh, the
# same script `make test` uses; scripts/make-bundle.sh) -> final (debian:bookworm-slim, non-root).

ARG RUST_IMAGE=rust:1-bookworm
ARG DEBIAN_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- build: every binary, release profile, exactly the checked-in Cargo.lock ----
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# NB: target/ is a cache mount (kept between builds, absent from the image), so the binaries are
# copied out to /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && for bin in lodger-operator lodger-node-agent lodger-stub kubectl-lodger lodger-shim lodger-workload; do \
        install -m 0755 "target/release/$bin" "/out/$bin"; \
    done

# ---- bundle: CRIU 4.x built from Debian trixie's source package, then /opt/lodger ----
FROM ${DEBIAN_IMAGE} AS bundle
COPY scripts/install-criu.sh scripts/make-bundle.sh /src/scripts/
RUN --mount=type=cache,target=/var/cache/lodger,sharing=locked \
    bash /src/scripts/install-criu.sh
COPY --from=build /out/lodger-shim /tmp/lodger-shim
RUN CRIU=/usr/local/sbin/criu SHIM=/tmp/lodger-shim bash /src/scripts/make-bundle.sh /opt/lodger \
 && env -i /opt/lodger/bin/criu --version \
 && env -i /opt/lodger/bin/lodger-shim --help >/dev/null

# ---- final: small, non-root by default ----
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.source="https://github.com/lodger-dev/lodger" \
      org.opencontainers.image.description="Lodger: live migration of batch jobs between idle workstations (CRIU)" \
      org.opencontainers.image.licenses="Apache-2.0"
# procps: `kill`, so `kubectl exec <job>-home -- kill -USR1 1` works as DESIGN.md shows (the stub
# catches the signal and forwards it to the job wherever it runs).
RUN apt-get update \
 && apt-get install -y --no-install-recommends procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=bundle /opt/lodger /opt/lodger
COPY --from=build /out/lodger-operator /out/lodger-node-agent /out/lodger-stub /out/kubectl-lodger /out/lodger-workload /usr/local/bin/
# NB: the shim never runs from this image's user: workload pods copy /opt/lodger (init container
# `cp -a /opt/lodger/. /lodger-tools/`, which needs no privilege) and run it as their own PID 1.
# The operator, agent and stub set their uid in the chart; this default is for everything else.
USER 65532:65532
