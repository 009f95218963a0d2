{#- Inside sys-monitor's template (an AppVM's root is discarded at reboot and
    units under /usr/local are not picked up, qubes-issues #6063):
    sudo qubesctl --skip-dom0 --targets=debian-13-xfce state.sls qubes.monitor.template-monitor
    Debian's own packages, through the updates proxy; sysmon itself as plain
    files in /usr/lib/sysmon; no pip, no PyPI. -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}
{%- set root = sysmon.root %}

{%- if sysmon.install_packages %}
sysmon-packages:
  pkg.installed:
    - pkgs:
      - python3
      - python3-trio
      - python3-attr
      - python3-structlog
      - python3-dateutil
{%- endif %}

sysmon-lib:
  file.recurse:
    - name: {{ root }}{{ sysmon.libdir }}/sysmon
    - source: salt://qubes/monitor/files/sysmon
    - clean: true
    - exclude_pat: E@(__pycache__|\.pyc$)
    - dir_mode: '0755'
    - file_mode: '0644'
    - makedirs: true

sysmon-command:
  file.managed:
    - name: {{ root }}/usr/bin/sysmon
    - source: salt://qubes/monitor/files/sysmon.sh
    - mode: '0755'
    - makedirs: true

sysmon-config:
  file.managed:
    - name: {{ root }}/etc/sysmon/sysmon.toml
    - source: salt://qubes/monitor/files/sysmon.toml.jinja
    - template: jinja
    - mode: '0644'
    - makedirs: true

sysmon-unit:
  file.managed:
    - name: {{ root }}/usr/lib/systemd/system/sysmon.service
    - source: salt://qubes/monitor/files/sysmon.service
    - mode: '0644'
    - makedirs: true

{%- if sysmon.enable_unit %}
sysmon-unit-enabled:
  service.enabled:
    - name: sysmon
    - require:
      - file: sysmon-unit
      - file: sysmon-lib
{%- endif %}
