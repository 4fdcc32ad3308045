# Build: docker build -t mallquest:local .  (compose.yaml builds it too)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/mallquest /mallquest

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /mallquest /usr/local/bin/mallquest
EXPOSE 8080
ENTRYPOINT ["mallquest"]
CMD ["run", "--config", "/etc/mallquest/mallquest.toml"]
