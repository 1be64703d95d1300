# One image with both binaries: syncrelay-node and syncrelay-operator.
#   docker build -t syncrelay .
#   docker run --rm syncrelay                                   # syncrelay-node --help
#   docker run --rm -p 1661:1661 syncrelay serve --listen 0.0.0.0:1661 --data /data
#   docker run --rm --entrypoint /usr/local/bin/syncrelay-operator syncrelay run
#
# Build stage: dependencies are cached in BuildKit cache mounts, so a source change rebuilds only
# the workspace crates.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY node ./node
COPY operator ./operator
COPY crds ./crds
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p syncrelay-node -p syncrelay-operator \
 && install -D -m 0755 target/release/syncrelay-node /out/syncrelay-node \
 && install -D -m 0755 target/release/syncrelay-operator /out/syncrelay-operator

# Runtime: distroless (glibc, CA certificates, no shell, no package manager), non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/syncrelay-node /out/syncrelay-operator /usr/local/bin/
USER 65532:65532
EXPOSE 1661
ENTRYPOINT ["/usr/local/bin/syncrelay-node"]
CMD ["--help"]
