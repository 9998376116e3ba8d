# ingestd in a container: the watch folder and the ledger are volumes, the
# password comes from the environment or a mounted file, never from the image.
# Every step below is also run outside Docker by `make docker-steps`.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md config.example.yaml ./
COPY systemd ./systemd
COPY ingestd ./ingestd
RUN python -m venv /opt/ingestd \
    && /opt/ingestd/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
COPY --from=build /opt/ingestd /opt/ingestd
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ingestd \
    && mkdir -p /var/lib/ingestd /srv/capture/export /etc/ingestd \
    && chown 10001:10001 /var/lib/ingestd
ENV PATH=/opt/ingestd/bin:$PATH \
    INGESTD_CONFIG=/etc/ingestd/config.yaml \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/ingestd", "/srv/capture/export"]
USER 10001:10001
STOPSIGNAL SIGTERM
# /healthz and /metrics (status.listen, default 127.0.0.1:9465). The check below runs
# inside the container and reads the same config: it asks status.listen's port over
# loopback and sends the token when one is set (status.token_file, or the credential
# status-token). To scrape /metrics from outside, set `status.listen: 0.0.0.0:9465` and
# a token, and publish the port. status.listen: null makes the container unhealthy.
EXPOSE 9465
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "ingestd.observe.healthcheck"]
ENTRYPOINT ["ingestd"]
CMD ["run"]
