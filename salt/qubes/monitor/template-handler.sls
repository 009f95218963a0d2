{#- In every template whose qubes sys-monitor polls:
    sudo qubesctl --skip-dom0 --targets=debian-13-xfce,fedora-43-xfce state.sls qubes.monitor.template-handler
    (the list is `handler_templates` in map.jinja; qubes.monitor.top does all). -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}

{#- The handler is an awk program that names mawk on its first line: Debian
    and Whonix templates ship it (priority required), Fedora's are given
    Fedora's package.  gawk, Fedora's own awk, runs it too (first line
    "#!/usr/bin/gawk -E") but costs 1.6x as much per poll (docs/performance.md). #}
{%- if sysmon.install_packages %}
sysmon-handler-awk:
  pkg.installed:
    - pkgs:
      - mawk
{%- endif %}

sysmon-handler:
  file.managed:
    - name: {{ sysmon.root }}/etc/qubes-rpc/qubes.Metrics.Get
    - source: salt://qubes/monitor/files/qubes.Metrics.Get
    - mode: '0755'
    - makedirs: true
{%- if sysmon.install_packages %}
    - require:
      - pkg: sysmon-handler-awk
{%- endif %}
