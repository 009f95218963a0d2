{#- netlog in the capture qubes' template:
    sudo qubesctl --skip-dom0 --targets=debian-13-xfce state.sls qubes.monitor.netlog-template
    The sysmon-netlog package: tcpdump from the distribution, the capture and
    retention scripts, units that start only where `qvm-service <qube>
    netpcap on`, /var/log/netpcap kept across reboots (bind-dirs); then the
    capture settings from map.jinja / pillar. -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}
{%- from "qubes/monitor/package.jinja" import install_package with context %}
{{ install_package('netlog-package', 'sysmon-netlog') }}

netlog-config:
  file.managed:
    - name: /etc/netlog/netpcap.conf
    - mode: '0644'
    - contents: |
        # netlog capture settings (salt: qubes.monitor.netlog-template).
        # Override per qube in /rw/config/netlog/netpcap.conf.
        NETPCAP_DIR=/var/log/netpcap
        NETPCAP_ROTATE_SECONDS={{ sysmon.netlog_rotate_seconds }}
        NETPCAP_KEEP_FILES={{ sysmon.netlog_keep_files }}
        NETPCAP_SNAPLEN={{ sysmon.netlog_snaplen }}
        NETPCAP_FILE_MB={{ sysmon.netlog_file_mb }}
        NETPCAP_MAX_MB={{ sysmon.netlog_max_mb }}
        NETPCAP_INTERFACE=any
    - require:
      - netlog-package
