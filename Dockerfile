# sallyport gateway + web in one image. Data (SQLite, keys, recordings) lives in /data.

# The browser player (asciinema-player) and terminal (xterm.js), from npm at the versions
# web/assets pins.
FROM node:20-bookworm-slim AS assets
WORKDIR /assets
COPY web/assets/package.json web/assets/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SALLYPORT_DATA_DIR=/data \
    SALLYPORT_GATEWAY_HOST=0.0.0.0 \
    SALLYPORT_WEB_HOST=0.0.0.0 \
    SALLYPORT_GATEWAY_BROWSER_HOST=0.0.0.0

RUN groupadd --system --gid 10001 sallyport \
 && useradd --system --uid 10001 --gid sallyport --home-dir /data --shell /usr/sbin/nologin sallyport \
 && mkdir -p /data /app \
 && chown sallyport:sallyport /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY policy ./policy
COPY recorder ./recorder
COPY web ./web
COPY --from=assets /assets/node_modules/asciinema-player/dist/bundle/asciinema-player.min.js \
     /assets/node_modules/asciinema-player/dist/bundle/asciinema-player.css \
     ./web/assets/node_modules/asciinema-player/dist/bundle/
COPY --from=assets /assets/node_modules/@xterm/xterm/lib/xterm.js ./web/assets/node_modules/@xterm/xterm/lib/
COPY --from=assets /assets/node_modules/@xterm/xterm/css/xterm.css ./web/assets/node_modules/@xterm/xterm/css/
COPY --from=assets /assets/node_modules/@xterm/addon-fit/lib/addon-fit.js \
     ./web/assets/node_modules/@xterm/addon-fit/lib/
COPY migrations ./migrations
RUN pip install --no-cache-dir .

USER 10001:10001
VOLUME ["/data"]
EXPOSE 2222 8022 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/api/v1/health', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["sallyport"]
CMD ["serve"]
