# One gateway node. docker-compose.yml runs three of them beside Redis.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY oplock_bus ./oplock_bus
COPY clients ./clients
RUN pip install --no-cache-dir . && mkdir -p /srv/share /etc/smbgw
EXPOSE 445
ENTRYPOINT ["smbgw"]
CMD ["serve", "--config", "/etc/smbgw/smbgw.toml"]
