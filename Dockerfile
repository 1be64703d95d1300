# One image with both binaries: syncrelay-node and syncrelay-operator.
#   docker build -t syncrelay .
#   docker run --rm syncrelay                                   # syncrelay-node --help
#   docker run --rm -p 1661:1661 syncrelay serve --listen 0.0.0.0:1661 --data /data
#   docker run --rm --entrypoint /usr/local/bin/syncrelay-operator syncrelay run
#
# Needs BuildKit (the default builder of current Docker; DOCKER_BUILDKIT=1 on Docker 20.10).
#
# Binaries built outside (CI builds the workspace anyway; compiling it again inside takes long on
# small machines): build them with `cargo build --release -p syncrelay-node -p syncrelay-operator`
# on a glibc ≥ 2.36 system (Debian 12 or the rust:1.95-bookworm image), then
#   docker build --build-arg BINARIES=prebuilt -t syncrelay .
# which copies target/release/syncrelay-{node,operator} (PREBUILT_DIR=target/debug for a debug
# build) into the same runtime stage instead of compiling; the build stage is then skipped.
ARG BINARIES=build

# Build stage: dependencies are cached in BuildKit cache mounts, so a source change rebuilds only
# the workspace crates.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY node ./node
COPY operator ./operator
COPY crds ./crds
# A workspace member too: cargo reads every member's manifest (only node and operator are built).
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p syncrelay-node -p syncrelay-operator \
 && install -D -m 0755 target/release/syncrelay-node /out/syncrelay-node \
 && install -D -m 0755 target/release/syncrelay-operator /out/syncrelay-operator

# Alternative to the build stage: binaries from the build context (see above).
FROM scratch AS prebuilt
ARG PREBUILT_DIR=target/release
COPY ${PREBUILT_DIR}/syncrelay-node ${PREBUILT_DIR}/syncrelay-operator /out/

FROM ${BINARIES} AS binaries

# Runtime: distroless (glibc, CA certificates, no shell, no package manager), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=binaries /out/syncrelay-node /out/syncrelay-operator /usr/local/bin/
USER 65532:65532
EXPOSE 1661
ENTRYPOINT ["/usr/local/bin/syncrelay-node"]
CMD ["--help"]
