# One image with every boxoffice binary (topics, boxoffice-processor, ...), for
# docker-compose.yml's `pipeline` profile. Build: docker build -t boxoffice .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
    && mkdir /out \
    && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY topics/ /app/topics/
COPY avro/schemas/ /app/avro/schemas/
WORKDIR /app
