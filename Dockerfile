# gatehouse container image.
#
# NOTE: no Docker engine was available where this file was written, so this build has not
# been run. Its build steps are the README's: `.ci/prereqs` then `cargo build --release`,
# which are run and tested on every change; only the image assembly around them is untested.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN .ci/prereqs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
COPY conf/gateway.yaml /etc/gatehouse/gateway.yaml
# The shipped config listens on loopback; inside a container the listeners must be reachable
# from outside, so the image's copy listens on every interface. Mount your own file over it.
RUN sed -i 's/address: 127.0.0.1:8080/address: 0.0.0.0:8080/; s/address: 127.0.0.1:9091/address: 0.0.0.0:9091/' \
        /etc/gatehouse/gateway.yaml \
    && gatehouse check -c /etc/gatehouse/gateway.yaml
EXPOSE 8080 9091
USER nobody
ENTRYPOINT ["gatehouse"]
CMD ["-c", "/etc/gatehouse/gateway.yaml", "--pid-file", "/tmp/gatehouse.pid", "--upgrade-sock", "/tmp/gatehouse_upgrade.sock"]
